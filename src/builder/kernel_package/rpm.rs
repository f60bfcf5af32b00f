//! `.rpm` kernel packages: a 96-byte lead, the signature header (padded to
//! 8 bytes), the main header, then the compressed cpio payload, read as one
//! stream and checked against the package's own digests.

use std::io::{self, BufReader, Read};

use anyhow::{bail, Context, Result};

use super::entries::{Entries, Kind};
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

/// Signature header tags rpm checks besides SHA-256 (rpm's `rpmtag.h`,
/// `RPMSIGTAG_*`): the SHA-1 (hex) of the main header, the size of main
/// header plus payload, the MD5 of both, and the space kept for signing.
const SIGTAG_SHA1: u32 = 269;
const SIGTAG_SIZE: u32 = 1000;
const SIGTAG_MD5: u32 = 1004;

/// The tags whose data is a region trailer (rpm's `RPMTAG_HEADERSIGNATURES`
/// in the signature header, `RPMTAG_HEADERIMMUTABLE` in the main one).
const REGION_SIGNATURES: u32 = 62;
const REGION_IMMUTABLE: u32 = 63;

/// Header data types (rpm's `rpmTagType`).
const RPM_INT16: u32 = 3;
const RPM_INT32: u32 = 4;
const RPM_INT64: u32 = 5;
const RPM_STRING: u32 = 6;
const RPM_BIN: u32 = 7;

/// The signature tags rpm knows, with the one type and (where fixed) count
/// it accepts for each: anything else is "signature tag[N]: BAD" in
/// `rpm -K` and a refused install.
const SIGNATURE_TAGS: &[(u32, &str, u32, Option<u32>)] = &[
    (REGION_SIGNATURES, "HEADERSIGNATURES", RPM_BIN, Some(16)),
    (267, "DSA", RPM_BIN, None),
    (268, "RSA", RPM_BIN, None),
    (SIGTAG_SHA1, "SHA1", RPM_STRING, Some(1)),
    (270, "LONGSIZE", RPM_INT64, Some(1)),
    (271, "LONGARCHIVESIZE", RPM_INT64, Some(1)),
    (SIGTAG_SHA256, "SHA256", RPM_STRING, Some(1)),
    (SIGTAG_SIZE, "SIZE", RPM_INT32, Some(1)),
    (1002, "PGP", RPM_BIN, None),
    (SIGTAG_MD5, "MD5", RPM_BIN, Some(16)),
    (1005, "GPG", RPM_BIN, None),
    (1007, "PAYLOADSIZE", RPM_INT32, Some(1)),
    (1008, "RESERVEDSPACE", RPM_BIN, None),
];

/// The tags of one RPM header we care about.
#[derive(Debug, Default)]
struct RpmHeader {
    strings: Vec<(u32, String)>,
    ints: Vec<(u32, u32)>,
    bins: Vec<(u32, Vec<u8>)>,
    /// SHA-1 (hex) of the header's bytes, what SIGTAG_SHA1 holds.
    sha1: String,
}

/// What one header's bytes hash to (magic included, as rpm hashes them).
struct HeaderBytes {
    sha256: Sha256Digest,
    len: usize,
    /// MD5 over the header so far; SIGTAG_MD5 covers it and the payload.
    md5: md5::Md5,
}

/// A reader that feeds what it passes on to an MD5.
struct Md5Tee<R> {
    inner: R,
    md5: md5::Md5,
}

impl<R: Read> Read for Md5Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        md5::Digest::update(&mut self.md5, &buf[..n]);
        Ok(n)
    }
}

/// How many data bytes an entry of `kind` with `count` elements takes at
/// `offset`, and the alignment its type needs; `None` for an unknown type
/// or strings that do not end inside the data.
fn entry_len(data: &[u8], kind: u32, offset: usize, count: u32) -> Option<(usize, usize)> {
    let count = count as usize;
    let strings = |n: usize| {
        let mut at = offset;
        for _ in 0..n {
            at += data.get(at..)?.iter().position(|b| *b == 0)? + 1;
        }
        Some(at - offset)
    };
    match kind {
        0 => Some((0, 1)),
        1 | 2 | RPM_BIN => Some((count, 1)),
        RPM_INT16 => Some((count.checked_mul(2)?, 2)),
        RPM_INT32 => Some((count.checked_mul(4)?, 4)),
        RPM_INT64 => Some((count.checked_mul(8)?, 8)),
        RPM_STRING if count == 1 => Some((strings(1)?, 1)),
        8 | 9 => Some((strings(count)?, 1)),
        _ => None,
    }
}

/// A header index's entries: (tag, type, offset, count).
fn index_entries(index: &[u8]) -> impl Iterator<Item = (u32, u32, usize, u32)> + '_ {
    index.chunks_exact(16).map(|e| {
        (
            read_u32(e, 0),
            read_u32(e, 4),
            read_u32(e, 8) as usize,
            read_u32(e, 12),
        )
    })
}

/// Check every index entry's shape as rpm does before trusting a header:
/// a known type, aligned, inside the data, after the one before it; in the
/// signature header, each known tag with the type and count rpm expects.
fn check_entries(index: &[u8], data: &[u8], what: &str) -> Result<()> {
    let mut spans = Vec::new();
    for (tag, kind, offset, count) in index_entries(index) {
        let known = (what == "signature")
            .then(|| SIGNATURE_TAGS.iter().find(|(t, ..)| *t == tag))
            .flatten();
        let name = known.map_or_else(|| tag.to_string(), |(_, n, ..)| format!("{n} ({tag})"));
        let bad = |why: &str| {
            anyhow::anyhow!(
                "the rpm {what} header's tag {name} is malformed ({why}: type {kind}, count {count}, offset {offset}, in {} bytes of data); rpm -K reports it BAD",
                data.len()
            )
        };
        if let Some((_, _, want_kind, want_count)) = known {
            if kind != *want_kind || want_count.is_some_and(|c| c != count) {
                return Err(bad("not the type and count rpm expects"));
            }
        }
        let (len, align) = entry_len(data, kind, offset, count).ok_or_else(|| bad("unreadable"))?;
        if offset % align != 0 {
            return Err(bad("misaligned"));
        }
        if offset.checked_add(len).is_none_or(|end| end > data.len()) {
            return Err(bad("past the end of the data"));
        }
        // A region tag's data is a trailer naming the tag again and, as a
        // negative offset, how many index entries the region covers.
        if matches!(tag, REGION_SIGNATURES | REGION_IMMUTABLE) && len == 16 {
            let trailer = &data[offset..offset + 16];
            let covered = (read_u32(trailer, 8) as i32).checked_neg().map(|o| o / 16);
            let shaped = read_u32(trailer, 0) == tag
                && read_u32(trailer, 4) == RPM_BIN
                && read_u32(trailer, 12) == 16
                && covered.is_some_and(|n| n > 0 && n as usize <= index.len() / 16)
                && read_u32(trailer, 8) as i32 % 16 == 0;
            if !shaped {
                return Err(bad("its region trailer does not name the region"));
            }
        }
        let region = matches!(tag, REGION_SIGNATURES | REGION_IMMUTABLE);
        spans.push((offset, offset + len, name, region, tag));
    }
    // In index order (after a leading region entry, whose trailer ends the
    // data), each entry's data starts where the previous one's ended or
    // later, as rpm lays them out and checks.
    let leading_region = spans.first().is_some_and(|(_, _, _, region, _)| *region);
    if let (true, Some((trailer, _, region, _, _)), Some(last)) =
        (leading_region, spans.first(), spans.last())
    {
        if spans.len() > 1 && last.1 > *trailer {
            bail!(
                "the rpm {what} header's tag {} runs into the trailer of region {region}; rpm -K reports it BAD",
                last.2
            );
        }
    }
    for pair in spans.windows(2).skip(usize::from(leading_region)) {
        // rpm sorts the index by tag and finds tags by binary search.
        if pair[1].4 <= pair[0].4 || pair[1].4 as i32 <= 0 {
            bail!(
                "the rpm {what} header's tags are not in ascending order ({} after {}); rpm -K reports it BAD",
                pair[1].2,
                pair[0].2
            );
        }
        if pair[1].0 < pair[0].1 {
            bail!(
                "the rpm {what} header's tag {} overlaps or precedes tag {} in its data; rpm -K reports it BAD",
                pair[1].2,
                pair[0].2
            );
        }
    }
    Ok(())
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
fn read_rpm_header<R: Read>(r: &mut R, what: &str) -> Result<(RpmHeader, HeaderBytes)> {
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
    check_entries(&index, &data, what)?;
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(intro);
        h.update(&index);
        h.update(&data);
        Sha256Digest::from_bytes(h.finalize().into())
    };
    let md5 = {
        use md5::Digest;
        let mut h = md5::Md5::new();
        h.update(intro);
        h.update(&index);
        h.update(&data);
        h
    };
    let sha1 = {
        use sha1::{Digest, Sha1};
        let mut h = Sha1::new();
        h.update(intro);
        h.update(&index);
        h.update(&data);
        hex::encode(h.finalize())
    };
    let mut header = RpmHeader {
        sha1,
        ..RpmHeader::default()
    };
    for (tag, kind, offset, n) in index_entries(&index) {
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
            RPM_BIN if offset + n as usize <= data.len() => header
                .bins
                .push((tag, data[offset..offset + n as usize].to_vec())),
            _ => {}
        }
    }
    let bytes = HeaderBytes {
        sha256: digest,
        len: 16 + count * 16 + data_len,
        md5,
    };
    Ok((header, bytes))
}

pub(super) fn read_rpm<R: Read>(reader: R, limits: &Limits, budget: &Budget) -> Result<Contents> {
    let mut r = BufReader::with_capacity(256 * 1024, reader);
    let mut lead = [0u8; 96];
    r.read_exact(&mut lead).context("reading the rpm lead")?;
    if lead[..4] != RPM_LEAD_MAGIC {
        bail!("not an rpm: bad lead magic");
    }
    // The signature header is padded to a multiple of 8 bytes.
    let (signature, sig_bytes) = read_rpm_header(&mut r, "signature")?;
    let pad = (8 - sig_bytes.len % 8) % 8;
    let mut skip = vec![0u8; pad];
    r.read_exact(&mut skip)
        .context("reading the rpm signature header: the file is truncated")?;
    let (header, main_bytes) = read_rpm_header(&mut r, "main")?;
    let header_sha256 = main_bytes.sha256;

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
    if let Some(want) = signature.string(SIGTAG_SHA1) {
        if !want.eq_ignore_ascii_case(&header.sha1) {
            bail!(
                "the rpm main header does not match the signature header's SHA1 digest: it says {want}, computed {}; rpm -K reports it BAD",
                header.sha1
            );
        }
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
    let mut raw = Md5Tee {
        inner: HashingReader::new(&mut r),
        md5: main_bytes.md5,
    };
    let mut payload = decompressor(compressor, &mut raw, "the rpm payload", limits, budget)?;
    let mut entries = Entries::default();
    loop {
        let mut entry =
            cpio::NewcReader::new(&mut payload).context("reading the rpm cpio payload")?;
        if entry.entry().is_trailer() {
            break;
        }
        let name = entry.entry().name().to_string();
        let mode = entry.entry().mode();
        let kind = Kind::from_mode(mode).with_context(|| {
            format!("the rpm payload holds {name:?} of unknown file type {mode:o}")
        })?;
        // A symlink's target is its data (a path, far below 4 KiB).
        let target = match kind {
            Kind::Symlink => Some(
                crate::bounded_read::read_text_limited(&mut entry, 4096)
                    .with_context(|| format!("reading the link {name:?}"))?,
            ),
            _ => None,
        };
        entries.check("the rpm payload", &name, kind, mode, target.as_deref())?;
        contents.note_path(&name);
        entry.finish().context("reading the rpm cpio payload")?;
    }
    to_end(payload, "the rpm payload")?;
    // Leave nothing unread for the caller's hash: consume the rest.
    io::copy(&mut raw, &mut io::sink())?;
    let Md5Tee {
        inner: raw,
        md5: md5_state,
    } = raw;
    let (payload_digest, payload_len) = raw.finish();
    if !want_payload.eq_ignore_ascii_case(&payload_digest.to_hex()) {
        bail!(
            "the rpm payload does not match its SHA-256 digest: the header says {want_payload}, computed {payload_digest}; the package is corrupted or truncated"
        );
    }
    // SIZE is main header plus payload, as rpm counts them.
    if let Some(size) = signature.int(SIGTAG_SIZE) {
        let real = main_bytes.len as u64 + payload_len;
        if u64::from(size) != real {
            bail!(
                "the rpm signature header's SIZE says {size} bytes of header and payload, but there are {real}; the package is corrupted"
            );
        }
    }
    if let Some((_, want)) = signature.bins.iter().find(|(t, _)| *t == SIGTAG_MD5) {
        let got = md5::Digest::finalize(md5_state).to_vec();
        if *want != got {
            bail!(
                "the rpm header and payload do not match the signature header's MD5 digest; rpm -K reports it BAD"
            );
        }
    }
    Ok(contents)
}
