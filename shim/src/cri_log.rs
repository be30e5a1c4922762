//! The CRI container log format, exactly as containerd's CRI plugin writes it
//! (`internal/cri/io/logger.go`, `redirectLogs`):
//!
//! `<RFC3339Nano timestamp> <stdout|stderr> <F|P> <text>\n`
//!
//! - one record per `\n`-terminated line, tag `F`; a trailing `\r` before the `\n` is dropped;
//! - a line longer than [`MAX_LINE`] bytes is cut into `MAX_LINE`-byte records tagged `P`, the
//!   rest (1..=`MAX_LINE` bytes) tagged `F`;
//! - bytes left without a newline when the stream ends are written tagged `P` (containerd treats
//!   an unterminated last line as partial);
//! - the timestamp is Go's `time.RFC3339Nano` in UTC: fractional seconds with trailing zeros
//!   trimmed (no fraction at all on a whole second), suffix `Z`.

use std::time::SystemTime;

/// Longest text carried by one record (containerd's default `max_container_log_line_size`).
pub const MAX_LINE: usize = 16 * 1024;

/// Which container stream a record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The container's stdout.
    Stdout,
    /// The container's stderr.
    Stderr,
}

impl Stream {
    /// The stream's name in a record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Whether a record ends a line (`F`) or continues on the next record (`P`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// Partial: the line continues in the next record.
    Partial,
    /// Full: the record ends a line.
    Full,
}

impl Tag {
    /// The tag letter in a record.
    pub fn as_str(self) -> &'static str {
        match self {
            Tag::Partial => "P",
            Tag::Full => "F",
        }
    }
}

/// Formats `t` like Go's `time.Now().UTC().Format(time.RFC3339Nano)`.
pub fn timestamp(t: SystemTime) -> String {
    let dt: chrono::DateTime<chrono::Utc> = t.into();
    let mut s = dt.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = chrono::Timelike::nanosecond(&dt) % 1_000_000_000;
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// One complete record, newline included, ready for a single write(2).
pub fn record(ts: &str, stream: Stream, tag: Tag, text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ts.len() + text.len() + 12);
    out.extend_from_slice(ts.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(tag.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(text);
    out.push(b'\n');
    out
}

/// Cuts a byte stream into CRI records. Feed it what `read(2)` returns; it calls `emit` for each
/// record as soon as it is known, keeping at most `max + 1` bytes buffered.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter cutting lines longer than `max` bytes (`max` >= 1).
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max: max.max(1),
        }
    }

    /// Consumes `data`, emitting every record it completes.
    pub fn feed(&mut self, mut data: &[u8], emit: &mut dyn FnMut(Tag, &[u8])) {
        while !data.is_empty() {
            match data.iter().position(|&b| b == b'\n') {
                Some(nl) => {
                    self.buf.extend_from_slice(&data[..nl]);
                    data = &data[nl + 1..];
                    if self.buf.last() == Some(&b'\r') {
                        self.buf.pop();
                    }
                    self.emit_partials(self.buf.len(), emit);
                    emit(Tag::Full, &self.buf);
                    self.buf.clear();
                }
                None => {
                    self.buf.extend_from_slice(data);
                    data = &[];
                    // A trailing '\r' may turn out to be half of "\r\n": do not count it yet.
                    let mut len = self.buf.len();
                    if self.buf.last() == Some(&b'\r') {
                        len -= 1;
                    }
                    self.emit_partials(len, emit);
                }
            }
        }
    }

    /// Ends the stream: whatever is left without a newline is written tagged `P`.
    pub fn finish(&mut self, emit: &mut dyn FnMut(Tag, &[u8])) {
        if self.buf.is_empty() {
            return;
        }
        self.emit_partials(self.buf.len(), emit);
        emit(Tag::Partial, &self.buf);
        self.buf.clear();
    }

    /// Emits `max`-byte `P` records while more than `max` bytes of the first `len` remain.
    fn emit_partials(&mut self, len: usize, emit: &mut dyn FnMut(Tag, &[u8])) {
        let mut start = 0;
        while len - start > self.max {
            emit(Tag::Partial, &self.buf[start..start + self.max]);
            start += self.max;
        }
        if start > 0 {
            self.buf.drain(..start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn split(chunks: &[&[u8]], max: usize) -> Vec<(Tag, Vec<u8>)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::new(max);
        for c in chunks {
            s.feed(c, &mut |t, b| out.push((t, b.to_vec())));
        }
        s.finish(&mut |t, b| out.push((t, b.to_vec())));
        out
    }

    fn f(s: &str) -> (Tag, Vec<u8>) {
        (Tag::Full, s.as_bytes().to_vec())
    }

    fn p(s: &str) -> (Tag, Vec<u8>) {
        (Tag::Partial, s.as_bytes().to_vec())
    }

    #[test]
    fn full_lines_and_crlf() {
        assert_eq!(split(&[b"a\nbb\r\n\n"], 16), vec![f("a"), f("bb"), f("")]);
        // "\r\n" split across reads.
        assert_eq!(split(&[b"ab\r", b"\ncd\n"], 16), vec![f("ab"), f("cd")]);
        // A lone '\r' inside a line stays.
        assert_eq!(split(&[b"a\rb\n"], 16), vec![f("a\rb")]);
    }

    #[test]
    fn lines_joined_across_reads() {
        assert_eq!(
            split(&[b"hel", b"lo\nwor", b"ld\n"], 16),
            vec![f("hello"), f("world")]
        );
    }

    #[test]
    fn long_lines_split_at_max() {
        assert_eq!(split(&[b"abcd\n"], 4), vec![f("abcd")]);
        assert_eq!(split(&[b"abcde\n"], 4), vec![p("abcd"), f("e")]);
        assert_eq!(split(&[b"abcdefgh\n"], 4), vec![p("abcd"), f("efgh")]);
        assert_eq!(
            split(&[b"ab", b"cdefghi", b"j\n"], 4),
            vec![p("abcd"), p("efgh"), f("ij")]
        );
        // "\r\n" right after a full-size piece does not create an extra record.
        assert_eq!(split(&[b"abcd\r", b"\n"], 4), vec![f("abcd")]);
    }

    #[test]
    fn unterminated_tail_is_partial() {
        assert_eq!(split(&[b"a\nrest"], 16), vec![f("a"), p("rest")]);
        assert_eq!(split(&[b"abcdef"], 4), vec![p("abcd"), p("ef")]);
        assert_eq!(split(&[b"abcd\r"], 4), vec![p("abcd"), p("\r")]);
        assert!(split(&[b""], 4).is_empty());
    }

    #[test]
    fn real_max_line() {
        let line = vec![b'x'; MAX_LINE * 2 + 1];
        let mut data = line.clone();
        data.push(b'\n');
        let out = split(&[&data], MAX_LINE);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].0, Tag::Partial);
        assert_eq!(out[0].1.len(), MAX_LINE);
        assert_eq!(out[1].0, Tag::Partial);
        assert_eq!(out[2], (Tag::Full, b"x".to_vec()));
    }

    #[test]
    fn timestamps_like_go_rfc3339nano() {
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 123_456_000);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.123456Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 0);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20Z");
        let t = UNIX_EPOCH + Duration::new(1_700_000_000, 1);
        assert_eq!(timestamp(t), "2023-11-14T22:13:20.000000001Z");
    }

    #[test]
    fn record_layout() {
        let r = record("2023-11-14T22:13:20Z", Stream::Stderr, Tag::Full, b"boom");
        assert_eq!(r, b"2023-11-14T22:13:20Z stderr F boom\n");
    }
}
