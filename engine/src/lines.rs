//! Input lines of a bounded length: `tally ingest` and `tally replay` read commands one per
//! line, and a line without an end (a truncated file, a stream of garbage) must not take all
//! memory. A line longer than the bound is skipped to its end and reported as such, and so is
//! a line that is not UTF-8: the lines after it are read as usual.

use std::io::{self, BufRead, Read};

/// The longest command line read, newline excluded (a program's whole text fits many times).
pub const MAX_LINE_BYTES: usize = 16 << 20;
/// The most room the reading buffer keeps between lines.
const KEPT_BUFFER_BYTES: usize = 64 << 10;

/// A line read, or what kept it from being read.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Text(String),
    /// Longer than the reader's bound, in bytes.
    TooLong {
        max_bytes: usize,
    },
    /// Bytes that are not UTF-8 (a binary file, another encoding).
    NotText,
}

impl Line {
    /// The line's text, or why it could not be read: the sentence its rejection gives.
    pub fn text(self) -> Result<String, String> {
        match self {
            Line::Text(text) => Ok(text),
            Line::TooLong { max_bytes } => Err(format!(
                "longer than {} MiB; the line was skipped",
                max_bytes >> 20
            )),
            Line::NotText => Err("not UTF-8 text; the line was skipped".into()),
        }
    }
}

/// The lines of `input`, as `BufRead::lines` gives them (without `\n` or `\r\n`), but none
/// longer than `max_bytes`.
pub struct BoundedLines<R> {
    input: R,
    max_bytes: usize,
    /// Each line is read into this buffer, kept with its room, and only then copied into a
    /// string of its own size: read into a new vector, a line of a few hundred bytes grew
    /// through six reallocations.
    bytes: Vec<u8>,
}

impl<R: BufRead> BoundedLines<R> {
    pub fn new(input: R, max_bytes: usize) -> BoundedLines<R> {
        BoundedLines {
            input,
            max_bytes,
            bytes: Vec::new(),
        }
    }
}

impl<R: BufRead> Iterator for BoundedLines<R> {
    type Item = io::Result<Line>;

    fn next(&mut self) -> Option<io::Result<Line>> {
        if self.bytes.capacity() > KEPT_BUFFER_BYTES {
            // A long line's room is not kept for the lines after it.
            self.bytes = Vec::new();
        }
        let bytes = &mut self.bytes;
        bytes.clear();
        let limit = self.max_bytes as u64 + 1;
        match (&mut self.input).take(limit).read_until(b'\n', bytes) {
            Err(error) => return Some(Err(error)),
            Ok(0) => return None,
            Ok(_) => {}
        }
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        } else if bytes.len() > self.max_bytes {
            let max_bytes = self.max_bytes;
            return Some(
                self.input
                    .skip_until(b'\n')
                    .map(|_| Line::TooLong { max_bytes }),
            );
        }
        Some(Ok(
            std::str::from_utf8(bytes).map_or(Line::NotText, |text| Line::Text(text.to_owned()))
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{BoundedLines, Line};

    fn read(input: &str, max_bytes: usize) -> Vec<Line> {
        BoundedLines::new(input.as_bytes(), max_bytes)
            .map(|line| line.expect("reads"))
            .collect()
    }

    fn text(line: &str) -> Line {
        Line::Text(line.to_string())
    }

    #[test]
    fn reads_lines_as_the_standard_library_does_up_to_the_bound() {
        let input = "one\r\ntwo\n\nlast";
        let ours: Vec<Line> = read(input, 100);
        let std: Vec<Line> = std::io::BufRead::lines(input.as_bytes())
            .map(|line| Line::Text(line.unwrap()))
            .collect();
        assert_eq!(ours, std);
        assert_eq!(
            read("four\nfive!\nsix", 4),
            [text("four"), Line::TooLong { max_bytes: 4 }, text("six")]
        );
        assert_eq!(read("toolong", 4), [Line::TooLong { max_bytes: 4 }]);
        assert_eq!(read("", 4), []);
    }

    #[test]
    fn a_long_line_is_skipped_through_a_small_buffer() {
        let long = "x".repeat(100_000);
        let input = format!("a\n{long}\nb\n");
        let lines: Vec<Line> = BoundedLines::new(
            std::io::BufReader::with_capacity(16, input.as_bytes()),
            1_000,
        )
        .map(|line| line.unwrap())
        .collect();
        assert_eq!(
            lines,
            [text("a"), Line::TooLong { max_bytes: 1_000 }, text("b")]
        );
    }

    #[test]
    fn a_long_lines_room_is_not_kept_for_the_lines_after_it() {
        let long = "y".repeat(200_000);
        let input = format!("{long}\nshort\n");
        let mut lines = BoundedLines::new(input.as_bytes(), 1 << 20);
        assert_eq!(lines.next().unwrap().unwrap(), text(&long));
        assert_eq!(lines.next().unwrap().unwrap(), text("short"));
        assert!(lines.bytes.capacity() <= super::KEPT_BUFFER_BYTES);
    }

    #[test]
    fn a_line_that_is_not_utf8_is_reported_and_reading_goes_on() {
        let lines: Vec<Line> = BoundedLines::new(&b"ok\n\xff\xfe\nnext"[..], 100)
            .map(|line| line.unwrap())
            .collect();
        assert_eq!(lines, [text("ok"), Line::NotText, text("next")]);
    }
}
