//! Bounded line reading shared by the TREC readers: one line at a time, never more than
//! [`MAX_LINE_BYTES`] of it, with its 1-based number for error messages.

use std::io::{BufRead, Read};

use crate::Error;

/// The longest line any reader accepts. TREC topic, qrels and run lines are short; a longer
/// "line" means a wrong or binary file, which must not be pulled into memory whole.
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// Reads `reader` line by line, each at most [`MAX_LINE_BYTES`] (without its newline).
#[derive(Debug)]
pub(crate) struct Lines<R> {
    reader: R,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> Lines<R> {
    pub(crate) fn new(reader: R) -> Self {
        Self { reader, line: 0, buf: Vec::new() }
    }

    /// The next line (trailing `\n` / `\r\n` removed) and its number, or `None` at the end.
    pub(crate) fn next_line(&mut self) -> Result<Option<(u64, &str)>, Error> {
        self.buf.clear();
        // One byte more than allowed (plus `\r\n`) tells a too-long line from a full one.
        let limit = (MAX_LINE_BYTES + 3) as u64;
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut self.buf)?;
        if read == 0 {
            return Ok(None);
        }
        self.line += 1;
        if self.buf.last() == Some(&b'\n') {
            self.buf.pop();
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        if self.buf.len() > MAX_LINE_BYTES {
            return Err(Error::Parse {
                line: self.line,
                message: format!("line longer than {MAX_LINE_BYTES} bytes: is this the right file?"),
            });
        }
        let text = std::str::from_utf8(&self.buf)
            .map_err(|_| Error::Parse { line: self.line, message: "not valid UTF-8".to_owned() })?;
        Ok(Some((self.line, text)))
    }
}
