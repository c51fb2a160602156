//! The snapshot file format: a logical, self-checking copy of an index's live documents as of one
//! committed generation, streamed in and out with bounded memory. Pure encoding and decoding
//! over `Read`/`Write`; the index side (which documents, temp file, rename, restore) is in
//! `index/backup.rs`.
//!
//! Layout (integers little-endian):
//! ```text
//! "RAGMSNAP"            8 bytes of magic
//! format version        u32 (1)
//! header frame          generation, applied log position, document count, creation time
//! `documents` frames    one live document each, as it would be re-ingested (owner and ACL included)
//! SHA-256               32 bytes: the digest of every byte before it
//! end of file
//! ```
//! A frame is a `u32` length followed by that many bytes of a protobuf message (prost, declared
//! here: the format is not part of the gRPC contract). Lengths are bounded before anything is
//! allocated, every record is validated like an ingested document, and the digest is checked
//! before a decoder reports success, so a truncated or altered file is refused.

use std::io::{self, Read, Write};

use prost::Message as _;
use sha2::{Digest as _, Sha256};

use crate::access::{Acl, SubjectRef, principal_problem};
use crate::document::{Document, validate_document};
use crate::position::AppliedLog;

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RAGMSNAP";
/// Version of the layout written; a decoder refuses any other.
pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;
/// Bytes of the SHA-256 trailer.
const CHECKSUM_BYTES: usize = 32;
/// Largest header frame: a few integers and a shard group name.
const MAX_HEADER_BYTES: usize = 4096;
/// Longest accepted snapshot name.
pub const MAX_SNAPSHOT_NAME: usize = 64;
/// File name extension of snapshots.
pub const SNAPSHOT_EXTENSION: &str = "snap";

/// Bounds on what a snapshot may hold; a file past any of them is refused before the index is
/// touched (and a snapshot that would pass one is never written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotLimits {
    /// Largest snapshot file, in bytes.
    pub max_bytes: u64,
    /// Most documents.
    pub max_documents: u64,
    /// Largest encoded document, in bytes.
    pub max_record_bytes: usize,
}

impl Default for SnapshotLimits {
    fn default() -> Self {
        SnapshotLimits { max_bytes: 16 * 1024 * 1024 * 1024, max_documents: 50_000_000, max_record_bytes: 16 << 20 }
    }
}

/// What a snapshot says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// Generation of the index the snapshot was taken at.
    pub generation: u64,
    /// Write-log position applied as of that generation.
    pub applied: AppliedLog,
    /// Live documents in the snapshot.
    pub documents: u64,
    /// When it was written, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
}

/// One document of a snapshot: the document as it would be re-ingested and the tenant that
/// owns it ("" for operators).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotDocument {
    /// The document, ACL and metadata included.
    pub document: Document,
    /// Tenant that wrote it ("" for operators): who may replace or delete it.
    pub owner: String,
}

/// Why a snapshot stream cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The bytes are not a valid snapshot (wrong magic or version, a bad record, a checksum
    /// mismatch, truncated, trailing data).
    #[error("{0}")]
    Corrupt(String),
    /// The snapshot exceeds the limits.
    #[error("{0}")]
    TooLarge(String),
}

#[derive(Clone, PartialEq, prost::Message)]
struct HeaderMessage {
    #[prost(uint64, tag = "1")]
    generation: u64,
    /// "" when the index followed no shard group's log yet.
    #[prost(string, tag = "2")]
    shard: String,
    #[prost(uint64, tag = "3")]
    applied_seq: u64,
    #[prost(uint64, tag = "4")]
    documents: u64,
    #[prost(uint64, tag = "5")]
    created_unix_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct SubjectMessage {
    #[prost(string, tag = "1")]
    tenant: String,
    #[prost(string, tag = "2")]
    subject: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RecordMessage {
    #[prost(string, tag = "1")]
    id: String,
    #[prost(string, tag = "2")]
    collection: String,
    #[prost(string, tag = "3")]
    title: String,
    #[prost(string, tag = "4")]
    body: String,
    #[prost(btree_map = "string, string", tag = "5")]
    metadata: std::collections::BTreeMap<String, String>,
    #[prost(string, tag = "6")]
    owner: String,
    #[prost(bool, tag = "7")]
    acl_public: bool,
    #[prost(string, repeated, tag = "8")]
    acl_tenants: Vec<String>,
    #[prost(message, repeated, tag = "9")]
    acl_subjects: Vec<SubjectMessage>,
}

impl RecordMessage {
    fn from_document(doc: &SnapshotDocument) -> Self {
        let d = &doc.document;
        RecordMessage {
            id: d.id.clone(),
            collection: d.collection.clone(),
            title: d.title.clone(),
            body: d.body.clone(),
            metadata: d.metadata.clone(),
            owner: doc.owner.clone(),
            acl_public: d.acl.public,
            acl_tenants: d.acl.tenants.iter().cloned().collect(),
            acl_subjects: d
                .acl
                .subjects
                .iter()
                .map(|s| SubjectMessage { tenant: s.tenant.clone(), subject: s.subject.clone() })
                .collect(),
        }
    }

    fn into_document(self) -> SnapshotDocument {
        let acl = Acl {
            public: self.acl_public,
            tenants: self.acl_tenants.into_iter().collect(),
            subjects: self
                .acl_subjects
                .into_iter()
                .map(|s| SubjectRef { tenant: s.tenant, subject: s.subject })
                .collect(),
        };
        let document = Document {
            id: self.id,
            collection: self.collection,
            title: self.title,
            body: self.body,
            metadata: self.metadata,
            acl,
        };
        SnapshotDocument { document, owner: self.owner }
    }
}

/// Whether `name` may name a snapshot: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`, so it is always one
/// plain file name inside the snapshot directory (never a path, never hidden, never `..`).
pub fn snapshot_name_problem(name: &str) -> Option<String> {
    let mut bytes = name.bytes();
    let first_ok = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let rest_ok = bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if first_ok && rest_ok && name.len() <= MAX_SNAPSHOT_NAME {
        return None;
    }
    Some(format!(
        "snapshot name {:?} is invalid: use 1-{MAX_SNAPSHOT_NAME} characters from A-Z a-z 0-9 . _ -, starting with a letter or digit",
        name.chars().take(80).collect::<String>()
    ))
}

/// Streams a snapshot into `out`: [`SnapshotEncoder::start`] writes magic, version and header,
/// [`SnapshotEncoder::document`] one record each, [`SnapshotEncoder::finish`] the checksum.
#[derive(Debug)]
pub struct SnapshotEncoder<W: Write> {
    out: W,
    hasher: Sha256,
    bytes: u64,
    limits: SnapshotLimits,
    expected: u64,
    written: u64,
    buf: Vec<u8>,
}

impl<W: Write> SnapshotEncoder<W> {
    /// Writes the magic, the version and `header`; refuses a header past `limits`.
    pub fn start(out: W, header: &SnapshotHeader, limits: SnapshotLimits) -> Result<Self, FormatError> {
        if header.documents > limits.max_documents {
            return Err(FormatError::TooLarge(format!(
                "{} documents, more than the {} a snapshot may hold",
                header.documents, limits.max_documents
            )));
        }
        let mut encoder = SnapshotEncoder {
            out,
            hasher: Sha256::new(),
            bytes: 0,
            limits,
            expected: header.documents,
            written: 0,
            buf: Vec::new(),
        };
        encoder.put(&SNAPSHOT_MAGIC)?;
        encoder.put(&SNAPSHOT_FORMAT_VERSION.to_le_bytes())?;
        let message = HeaderMessage {
            generation: header.generation,
            shard: header.applied.shard.clone().unwrap_or_default(),
            applied_seq: header.applied.seq,
            documents: header.documents,
            created_unix_ms: header.created_unix_ms,
        };
        encoder.frame(&message, MAX_HEADER_BYTES)?;
        Ok(encoder)
    }

    /// Appends one document; refuses one larger than `max_record_bytes` or past the header's count.
    pub fn document(&mut self, doc: &SnapshotDocument) -> Result<(), FormatError> {
        if self.written >= self.expected {
            return Err(FormatError::Corrupt(format!(
                "more documents than the {} the header announced",
                self.expected
            )));
        }
        let message = RecordMessage::from_document(doc);
        self.frame(&message, self.limits.max_record_bytes).map_err(|err| match err {
            FormatError::TooLarge(reason) => {
                FormatError::TooLarge(format!("document {}/{}: {reason}", doc.document.collection, doc.document.id))
            }
            other => other,
        })?;
        self.written += 1;
        if self.bytes > self.limits.max_bytes {
            return Err(FormatError::TooLarge(format!(
                "the snapshot passes the {}-byte limit of a snapshot file",
                self.limits.max_bytes
            )));
        }
        Ok(())
    }

    /// Writes the checksum once every announced document was written; returns the output and
    /// the bytes written in all.
    pub fn finish(mut self) -> Result<(W, u64), FormatError> {
        if self.written != self.expected {
            return Err(FormatError::Corrupt(format!(
                "{} documents written but the header announced {}",
                self.written, self.expected
            )));
        }
        let digest = self.hasher.finalize_reset();
        self.out.write_all(&digest)?;
        self.out.flush()?;
        Ok((self.out, self.bytes + CHECKSUM_BYTES as u64))
    }

    fn frame(&mut self, message: &impl prost::Message, max: usize) -> Result<(), FormatError> {
        let len = message.encoded_len();
        if len > max {
            return Err(FormatError::TooLarge(format!("a record of {len} bytes passes the {max}-byte limit")));
        }
        let len32 = u32::try_from(len).map_err(|_| FormatError::TooLarge(format!("a record of {len} bytes")))?;
        self.buf.clear();
        message.encode(&mut self.buf).map_err(|err| FormatError::Io(io::Error::other(err)))?;
        let buf = std::mem::take(&mut self.buf);
        self.put(&len32.to_le_bytes())?;
        self.put(&buf)?;
        self.buf = buf;
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.hasher.update(bytes);
        self.out.write_all(bytes)?;
        self.bytes += bytes.len() as u64;
        Ok(())
    }
}

/// Streams a snapshot out of `input`, checking as it goes: [`SnapshotDecoder::start`] reads and
/// checks magic, version and header, [`SnapshotDecoder::next_document`] yields the validated
/// documents, [`SnapshotDecoder::finish`] checks the checksum and the end of the file. Only a
/// successful `finish` says the whole file is intact.
#[derive(Debug)]
pub struct SnapshotDecoder<R: Read> {
    input: R,
    hasher: Sha256,
    bytes: u64,
    limits: SnapshotLimits,
    header: SnapshotHeader,
    read: u64,
    buf: Vec<u8>,
}

impl<R: Read> SnapshotDecoder<R> {
    /// Reads and checks magic, version and header.
    pub fn start(input: R, limits: SnapshotLimits) -> Result<Self, FormatError> {
        let mut decoder = SnapshotDecoder {
            input,
            hasher: Sha256::new(),
            bytes: 0,
            limits,
            header: SnapshotHeader { generation: 0, applied: AppliedLog::default(), documents: 0, created_unix_ms: 0 },
            read: 0,
            buf: Vec::new(),
        };
        let mut magic = [0u8; 8];
        decoder.take(&mut magic, "the magic")?;
        if magic != SNAPSHOT_MAGIC {
            return Err(FormatError::Corrupt("not a ragmesh snapshot (wrong magic bytes)".to_owned()));
        }
        let mut version = [0u8; 4];
        decoder.take(&mut version, "the format version")?;
        let version = u32::from_le_bytes(version);
        if version != SNAPSHOT_FORMAT_VERSION {
            return Err(FormatError::Corrupt(format!(
                "snapshot format version {version}; this agent reads version {SNAPSHOT_FORMAT_VERSION}"
            )));
        }
        decoder.frame(MAX_HEADER_BYTES, "the header")?;
        let message = HeaderMessage::decode(decoder.buf.as_slice())
            .map_err(|err| FormatError::Corrupt(format!("the header does not decode: {err}")))?;
        if message.shard.is_empty() != (message.applied_seq == 0) {
            return Err(FormatError::Corrupt(format!(
                "the header's log position (shard {:?}, seq {}) is inconsistent",
                message.shard, message.applied_seq
            )));
        }
        if message.documents > limits.max_documents {
            return Err(FormatError::TooLarge(format!(
                "the snapshot holds {} documents, more than the {} this agent restores",
                message.documents, limits.max_documents
            )));
        }
        decoder.header = SnapshotHeader {
            generation: message.generation,
            applied: AppliedLog {
                shard: (!message.shard.is_empty()).then_some(message.shard),
                seq: message.applied_seq,
            },
            documents: message.documents,
            created_unix_ms: message.created_unix_ms,
        };
        Ok(decoder)
    }

    /// The header.
    pub fn header(&self) -> &SnapshotHeader {
        &self.header
    }

    /// The next document, validated like an ingested one; `None` after the header's count.
    pub fn next_document(&mut self) -> Result<Option<SnapshotDocument>, FormatError> {
        if self.read >= self.header.documents {
            return Ok(None);
        }
        let position = self.read;
        self.frame(self.limits.max_record_bytes, "a document")?;
        let message = RecordMessage::decode(self.buf.as_slice())
            .map_err(|err| FormatError::Corrupt(format!("document {position} does not decode: {err}")))?;
        let doc = message.into_document();
        let position_usize = usize::try_from(position).unwrap_or(usize::MAX);
        validate_document(position_usize, &doc.document)
            .map_err(|err| FormatError::Corrupt(format!("snapshot record: {err}")))?;
        if !doc.owner.is_empty()
            && let Some(problem) = principal_problem(&doc.owner)
        {
            return Err(FormatError::Corrupt(format!("document {position}: owner: {problem}")));
        }
        self.read += 1;
        Ok(Some(doc))
    }

    /// Checks that every document was read, the checksum matches and nothing follows it;
    /// returns the bytes read in all.
    pub fn finish(mut self) -> Result<u64, FormatError> {
        if self.read != self.header.documents {
            return Err(FormatError::Corrupt(format!(
                "{} of {} documents read before finishing",
                self.read, self.header.documents
            )));
        }
        let expected = self.hasher.finalize_reset();
        let mut stored = [0u8; CHECKSUM_BYTES];
        read_exact_or_truncated(&mut self.input, &mut stored, "the checksum")?;
        if stored[..] != expected[..] {
            return Err(FormatError::Corrupt("checksum mismatch: the file was altered or damaged".to_owned()));
        }
        let mut extra = [0u8; 1];
        loop {
            match self.input.read(&mut extra) {
                Ok(0) => break,
                Ok(_) => return Err(FormatError::Corrupt("data after the checksum".to_owned())),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Ok(self.bytes + CHECKSUM_BYTES as u64)
    }

    /// Reads one frame (at most `max` bytes) into `self.buf`.
    fn frame(&mut self, max: usize, what: &str) -> Result<(), FormatError> {
        let mut len = [0u8; 4];
        self.take(&mut len, what)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > max {
            return Err(FormatError::TooLarge(format!("{what} is {len} bytes, more than the {max}-byte limit")));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        let taken = self.take(&mut buf, what);
        self.buf = buf;
        taken
    }

    fn take(&mut self, into: &mut [u8], what: &str) -> Result<(), FormatError> {
        let total = self.bytes + into.len() as u64;
        if total > self.limits.max_bytes {
            return Err(FormatError::TooLarge(format!(
                "the snapshot passes the {}-byte limit of a snapshot file",
                self.limits.max_bytes
            )));
        }
        read_exact_or_truncated(&mut self.input, into, what)?;
        self.hasher.update(&*into);
        self.bytes = total;
        Ok(())
    }
}

fn read_exact_or_truncated(input: &mut impl Read, into: &mut [u8], what: &str) -> Result<(), FormatError> {
    input.read_exact(into).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            FormatError::Corrupt(format!("the file ends inside {what}: it is truncated"))
        } else {
            FormatError::Io(err)
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    fn encode(header: &SnapshotHeader, docs: &[SnapshotDocument]) -> Vec<u8> {
        let mut encoder = SnapshotEncoder::start(Vec::new(), header, SnapshotLimits::default()).expect("start");
        for doc in docs {
            encoder.document(doc).expect("document");
        }
        let (bytes, len) = encoder.finish().expect("finish");
        assert_eq!(len, bytes.len() as u64);
        bytes
    }

    fn decode(bytes: &[u8]) -> Result<(SnapshotHeader, Vec<SnapshotDocument>), FormatError> {
        let mut decoder = SnapshotDecoder::start(bytes, SnapshotLimits::default())?;
        let header = decoder.header().clone();
        let mut docs = Vec::new();
        while let Some(doc) = decoder.next_document()? {
            docs.push(doc);
        }
        decoder.finish()?;
        Ok((header, docs))
    }

    fn arb_name() -> impl Strategy<Value = String> {
        "[a-z0-9]{1,8}"
    }

    fn arb_doc() -> impl Strategy<Value = SnapshotDocument> {
        let acl = (
            any::<bool>(),
            prop::collection::btree_set(arb_name(), 0..3),
            prop::collection::btree_set(
                (arb_name(), arb_name()).prop_map(|(tenant, subject)| SubjectRef { tenant, subject }),
                0..3,
            ),
        )
            .prop_map(|(public, tenants, subjects)| Acl { public, tenants, subjects });
        (
            "[a-zA-Z0-9 ]{1,12}",
            "[a-z]{1,6}",
            ".{0,20}",
            ".{0,60}",
            prop::collection::btree_map(arb_name(), ".{0,10}", 0..3),
            acl,
            prop_oneof![Just(String::new()), arb_name()],
        )
            .prop_map(|(id, collection, title, body, metadata, acl, owner)| SnapshotDocument {
                document: Document { id, collection, title, body, metadata, acl },
                owner,
            })
    }

    fn header(documents: u64) -> SnapshotHeader {
        SnapshotHeader {
            generation: 7,
            applied: AppliedLog { shard: Some("g1".to_owned()), seq: 41 },
            documents,
            created_unix_ms: 1_700_000_000_000,
        }
    }

    #[test]
    fn names_are_plain_file_names() {
        for ok in ["a", "nightly-2024.01_02", &"x".repeat(64)] {
            assert_eq!(snapshot_name_problem(ok), None, "{ok}");
        }
        for bad in ["", ".hidden", "..", "a/b", "../etc", "-x", "a b", "é", &"x".repeat(65), "a\0b"] {
            assert!(snapshot_name_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn an_empty_snapshot_round_trips() {
        let empty = SnapshotHeader { applied: AppliedLog::default(), ..header(0) };
        let bytes = encode(&empty, &[]);
        assert_eq!(decode(&bytes).expect("decode"), (empty, Vec::new()));
    }

    #[test]
    fn the_encoder_refuses_more_or_fewer_documents_than_announced() {
        let doc = SnapshotDocument {
            document: Document {
                id: "a".into(),
                collection: "c".into(),
                title: String::new(),
                body: String::new(),
                metadata: BTreeMap::new(),
                acl: Acl { tenants: BTreeSet::from(["t".to_owned()]), ..Acl::default() },
            },
            owner: String::new(),
        };
        let encoder = SnapshotEncoder::start(Vec::new(), &header(1), SnapshotLimits::default()).expect("start");
        assert!(encoder.finish().is_err(), "one document missing");
        let mut encoder = SnapshotEncoder::start(Vec::new(), &header(1), SnapshotLimits::default()).expect("start");
        encoder.document(&doc).expect("first");
        assert!(encoder.document(&doc).is_err(), "one too many");
    }

    #[test]
    fn limits_refuse_large_files_before_reading_them() {
        let limits = SnapshotLimits { max_documents: 2, ..SnapshotLimits::default() };
        let bytes = encode(&header(0), &[]);
        assert!(matches!(SnapshotEncoder::start(Vec::new(), &header(3), limits), Err(FormatError::TooLarge(_))));
        let small_file = SnapshotLimits { max_bytes: 10, ..SnapshotLimits::default() };
        let err = SnapshotDecoder::start(bytes.as_slice(), small_file).expect_err("too large");
        assert!(matches!(err, FormatError::TooLarge(_)), "{err:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        #[test]
        fn documents_round_trip(docs in prop::collection::vec(arb_doc(), 0..6)) {
            let bytes = encode(&header(docs.len() as u64), &docs);
            let (decoded_header, decoded) = decode(&bytes).expect("decode");
            prop_assert_eq!(decoded_header, header(docs.len() as u64));
            prop_assert_eq!(decoded, docs);
        }

        /// Any one byte changed anywhere (magic, lengths, records, checksum) is detected.
        #[test]
        fn any_single_byte_corruption_is_detected(
            docs in prop::collection::vec(arb_doc(), 1..4),
            at in any::<prop::sample::Index>(),
            flip in 1u8..=255,
        ) {
            let mut bytes = encode(&header(docs.len() as u64), &docs);
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            prop_assert!(decode(&bytes).is_err(), "byte {} of {} altered but accepted", i, bytes.len());
        }

        #[test]
        fn any_truncation_or_extension_is_detected(
            docs in prop::collection::vec(arb_doc(), 0..4),
            at in any::<prop::sample::Index>(),
            extra in 1u8..=255,
        ) {
            let bytes = encode(&header(docs.len() as u64), &docs);
            let cut = at.index(bytes.len());
            prop_assert!(decode(&bytes[..cut]).is_err(), "truncated at {} of {} but accepted", cut, bytes.len());
            let mut longer = bytes.clone();
            longer.push(extra);
            prop_assert!(decode(&longer).is_err(), "trailing data accepted");
        }
    }
}
