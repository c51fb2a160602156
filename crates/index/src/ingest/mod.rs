//! Turns files into [`Document`]s: TREC, JSON lines and plain-text/markdown, one file or a tree.
//!
//! These are pure functions over text (plus a deterministic directory walk in [`load_path`]);
//! they do not validate documents against index limits, [`crate::DocumentIndex::upsert`] does.

mod jsonl;
mod text;
mod trec;

use std::fs;
use std::path::{Path, PathBuf};

pub use jsonl::parse_jsonl;
pub use text::document_from_text_file;
pub use trec::parse_trec;

use crate::Document;

/// How [`load_path`] interprets files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// By extension: `.trec`; `.jsonl`/`.ndjson`; `.txt`/`.md`/`.markdown`. Others are skipped
    /// in a directory and rejected as a single file.
    #[default]
    Auto,
    /// TREC `<DOC>` blocks.
    Trec,
    /// One JSON object per line.
    Jsonl,
    /// The whole file is one document.
    Text,
}

/// Why files could not be turned into documents.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// Malformed TREC input.
    #[error("line {line}: {reason}")]
    Trec {
        /// 1-based line number where the problem starts.
        line: usize,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Malformed JSON lines input.
    #[error("line {line}: {reason}")]
    Jsonl {
        /// 1-based line number of the bad record.
        line: usize,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// A single file whose format cannot be told from its extension.
    #[error(
        "{path}: unknown file type: use a .trec, .jsonl, .ndjson, .txt, .md or .markdown extension, or choose a format explicitly"
    )]
    UnknownFormat {
        /// The file.
        path: PathBuf,
    },
    /// A parse error inside a file.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The parse error, with its line number.
        source: Box<IngestError>,
    },
}

/// Loads documents from a file or, recursively, from a directory.
///
/// Directories are walked in sorted order, skipping hidden entries (names starting with `.`)
/// and symlinked directories. With [`Format::Auto`] files are chosen by extension and others
/// skipped; with an explicit format every file is read in that format. Text documents get the
/// path relative to `path` (or the file name, for a single file) as their id.
pub fn load_path(path: &Path, collection: &str, format: Format) -> Result<Vec<Document>, IngestError> {
    let metadata = fs::metadata(path).map_err(|source| IngestError::Read { path: path.to_path_buf(), source })?;
    if !metadata.is_dir() {
        let format = match format {
            Format::Auto => {
                format_from_extension(path).ok_or_else(|| IngestError::UnknownFormat { path: path.to_path_buf() })?
            }
            explicit => explicit,
        };
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.to_string_lossy().into_owned());
        return load_file(path, &name, collection, format);
    }

    let mut files = Vec::new();
    collect_files(path, &mut files)?;
    let mut docs = Vec::new();
    for file in files {
        let file_format = match format {
            Format::Auto => match format_from_extension(&file) {
                Some(found) => found,
                None => {
                    tracing::debug!(file.path = %file.display(), "skipping file of unknown type");
                    continue;
                }
            },
            explicit => explicit,
        };
        let relative = relative_id(path, &file);
        docs.extend(load_file(&file, &relative, collection, file_format)?);
    }
    Ok(docs)
}

fn load_file(path: &Path, relative: &str, collection: &str, format: Format) -> Result<Vec<Document>, IngestError> {
    let text = fs::read_to_string(path).map_err(|source| IngestError::Read { path: path.to_path_buf(), source })?;
    let in_file = |source| IngestError::File { path: path.to_path_buf(), source: Box::new(source) };
    match format {
        Format::Trec => parse_trec(&text, collection).map_err(in_file),
        Format::Jsonl => parse_jsonl(&text, collection).map_err(in_file),
        Format::Text | Format::Auto => Ok(vec![document_from_text_file(relative, &text, collection)]),
    }
}

fn format_from_extension(path: &Path) -> Option<Format> {
    let extension = path.extension()?.to_str()?.to_ascii_lowercase();
    match extension.as_str() {
        "trec" => Some(Format::Trec),
        "jsonl" | "ndjson" => Some(Format::Jsonl),
        "txt" | "md" | "markdown" => Some(Format::Text),
        _ => None,
    }
}

fn is_hidden(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with('.')
}

/// Appends the non-hidden files under `dir` to `out`, depth first, in name order.
fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), IngestError> {
    let read_error = |source| IngestError::Read { path: dir.to_path_buf(), source };
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir).map_err(read_error)? {
        entries.push(entry.map_err(read_error)?);
    }
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        if is_hidden(&entry.file_name()) {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type().map_err(|source| IngestError::Read { path: path.clone(), source })?;
        if file_type.is_dir() {
            collect_files(&path, out)?;
        } else if file_type.is_symlink() {
            // Follow links to files, not to directories, so a link cycle cannot loop forever.
            match fs::metadata(&path) {
                Ok(target) if target.is_file() => out.push(path),
                Ok(_) => {
                    tracing::debug!(file.path = %path.display(), "skipping symlinked directory")
                }
                Err(source) => return Err(IngestError::Read { path, source }),
            }
        } else if file_type.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// `file` relative to `root`, with `/` separators whatever the platform.
fn relative_id(root: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(root).unwrap_or(file);
    let parts: Vec<String> =
        relative.components().map(|part| part.as_os_str().to_string_lossy().into_owned()).collect();
    parts.join("/")
}

/// Collapses every whitespace run to one space and trims the ends.
fn normalize_whitespace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(path: &Path, text: &str) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).expect("create test dir");
        }
        fs::write(path, text).expect("write test file");
    }

    #[test]
    fn directory_walk_is_sorted_and_skips_hidden_and_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        write(&root.join("b.md"), "# Bee\nbuzz");
        write(&root.join("a.txt"), "first line\nrest");
        write(&root.join("sub/c.markdown"), "\n\n## Sea\nwaves");
        write(&root.join("sub/d.jsonl"), "{\"id\":\"j1\",\"text\":\"json body\"}\n");
        write(&root.join("sub/e.trec"), "<DOC><DOCNO>t1</DOCNO>trec body</DOC>");
        write(&root.join(".hidden.txt"), "secret");
        write(&root.join(".git/config.txt"), "secret");
        write(&root.join("image.png"), "not text");

        let docs = load_path(root, "c", Format::Auto).expect("load");
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids, ["a.txt", "b.md", "sub/c.markdown", "j1", "t1"]);
        let titles: Vec<&str> = docs.iter().map(|d| d.title.as_str()).collect();
        assert_eq!(titles, ["first line", "Bee", "Sea", "", ""], "jsonl and TREC make no title up");
        assert!(docs.iter().all(|d| d.collection == "c"));
    }

    #[test]
    fn single_file_by_extension_or_explicit_format() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("notes.data");
        write(&file, "<DOC><DOCNO>1</DOCNO>x</DOC>");
        let err = load_path(&file, "c", Format::Auto).expect_err("unknown extension");
        assert!(err.to_string().contains("unknown file type"), "{err}");

        let as_trec = load_path(&file, "c", Format::Trec).expect("explicit trec");
        assert_eq!(as_trec[0].id, "1");
        let as_text = load_path(&file, "c", Format::Text).expect("explicit text");
        assert_eq!(as_text[0].id, "notes.data");
        assert_eq!(as_text[0].body, "<DOC><DOCNO>1</DOCNO>x</DOC>");
    }

    #[test]
    fn parse_errors_carry_the_file_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("bad.jsonl");
        write(&file, "{\"id\":\"1\",\"body\":\"ok\"}\nnot json\n");
        let err = load_path(dir.path(), "c", Format::Auto).expect_err("bad line");
        let message = err.to_string();
        assert!(message.contains("bad.jsonl"), "{message}");
        assert!(message.contains("line 2"), "{message}");
    }

    #[test]
    fn missing_path_is_a_read_error_with_the_path() {
        let err = load_path(Path::new("/definitely/not/here"), "c", Format::Auto).expect_err("missing");
        assert!(err.to_string().starts_with("cannot read /definitely/not/here"), "{err}");
    }

    #[test]
    fn whitespace_and_titles() {
        assert_eq!(normalize_whitespace("  a \n\t b  c "), "a b c");
        assert_eq!(
            crate::display_title("one two three four five six seven eight nine"),
            "one two three four five six seven eight"
        );
    }
}
