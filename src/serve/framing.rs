//! What the client wrapper checks in plain HTTP/1 bytes before hyper parses
//! them. [`Framing`] follows the byte stream message by message, as hyper
//! frames it (heads, Content-Length bodies, chunked bodies), and checks:
//! - the size of a request head (414 / 431) and its HTTP version (505; 1.x
//!   with x > 1 is served as 1.1, RFC 9110 2.5);
//! - Content-Length beside Transfer-Encoding: hyper drops the Content-Length
//!   and goes on, RFC 9112 6.1 lets a server refuse it, nginx does (400);
//! - a chunked body's framing, strictly by RFC 9112 7.1: hyper's decoder
//!   lets control bytes through in chunk extensions, waits on a bare LF in
//!   the trailer section, and cannot check a declared chunk size against
//!   `client_max_body_size` before the data arrives (413 at once, as nginx).
//!
//! Where the follower is unsure where a message ends (a Content-Length it
//! cannot read, a head that hyper will refuse) it stops checking: hyper's
//! parser stays the one that frames requests, so a stop loses checks, never
//! correctness. One pass over each read, no copies but the first bytes of
//! a header line split between reads.

use super::conn::ConnState;
use http::StatusCode;

/// Follows the requests on one HTTP/1 connection.
#[derive(Default)]
pub struct Framing {
    part: Part,
    head: HeadScan,
    /// Request heads completed so far (the handler numbers requests alike).
    heads: u64,
}

#[derive(Default)]
enum Part {
    #[default]
    Head,
    Length(u64),
    Chunked(ChunkScan),
    /// No longer followed (see the module notes).
    Opaque,
}

/// What the wrapper must do after a read.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Fine,
    /// Answer this head at once and close: it is the next request and no
    /// other is in flight.
    Reject(StatusCode, &'static str),
    /// Hand hyper only the bytes before this offset, then fail its reads:
    /// the fault is recorded in the connection's state for the handler.
    Cut(usize),
}

impl Framing {
    /// Between messages, after `heads` request heads.
    pub fn after(heads: u64) -> Self {
        Framing {
            heads,
            ..Framing::default()
        }
    }

    /// Request heads completed so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    /// Between messages or inside a head (not in a body).
    pub fn at_head(&self) -> bool {
        matches!(self.part, Part::Head)
    }

    /// Bytes of the current head so far.
    pub fn head_bytes(&self) -> usize {
        self.head.bytes
    }

    /// Follow the next bytes read. `direct`: no request is in flight and
    /// none is parsed but not yet handled, so a head may be answered here.
    pub fn feed(
        &mut self,
        data: &mut [u8],
        state: &ConnState,
        max_head: usize,
        mut direct: bool,
    ) -> Verdict {
        let mut i = 0;
        while i < data.len() {
            match &mut self.part {
                Part::Opaque => break,
                Part::Length(left) => {
                    let take = (*left).min((data.len() - i) as u64);
                    *left -= take;
                    i += take as usize;
                    if *left == 0 {
                        self.part = Part::Head;
                    }
                }
                Part::Chunked(scan) => {
                    let request = self.heads;
                    let verdict = scan.feed(&data[i..], state.body_limit(request));
                    state.note_declared_body(request, scan.declared);
                    match verdict {
                        ChunkVerdict::More => break,
                        ChunkVerdict::Done(n) => {
                            i += n;
                            self.part = Part::Head;
                        }
                        ChunkVerdict::Bad(n, why) => {
                            tracing::info!(
                                status = why.status().as_u16(),
                                reason = why.reason(),
                                "refusing a chunked body"
                            );
                            state.flag_framing(request, why);
                            self.part = Part::Opaque;
                            return Verdict::Cut(i + n);
                        }
                    }
                }
                Part::Head => match self.head.feed(&mut data[i..], max_head) {
                    HeadVerdict::Partial => break,
                    HeadVerdict::Complete { body_at, body } => {
                        i += body_at;
                        self.heads += 1;
                        self.head = HeadScan::default();
                        // What follows is pipelined: it waits for this request.
                        direct = false;
                        self.part = match body {
                            Body::None => Part::Head,
                            Body::Length(n) => Part::Length(n),
                            Body::Chunked { also_length } => {
                                if also_length {
                                    state.flag_framing(
                                        self.heads,
                                        FramingError::ContentLengthWithChunked,
                                    );
                                }
                                Part::Chunked(ChunkScan::default())
                            }
                            Body::Unknown => Part::Opaque,
                        };
                    }
                    refused => {
                        let (status, reason) = match refused {
                            HeadVerdict::RequestLineTooLong => (
                                StatusCode::URI_TOO_LONG,
                                "request line over max_header_size",
                            ),
                            HeadVerdict::HeadTooLarge => (
                                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                                "request head over max_header_size",
                            ),
                            _ => (
                                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                                "HTTP major version other than 1",
                            ),
                        };
                        self.part = Part::Opaque;
                        if direct {
                            return Verdict::Reject(status, reason);
                        }
                        // Pipelined behind a request being answered: hyper's own
                        // limits and parser answer it (431 / 400).
                        break;
                    }
                },
            }
        }
        Verdict::Fine
    }
}

/// Scans the bytes of a request head as they arrive.
#[derive(Default)]
struct HeadScan {
    bytes: usize,
    /// Complete lines seen (the request line is line 0).
    lines: usize,
    /// The current line has content (not counting CR).
    line_has_content: bool,
    /// The start of a header line that began in an earlier read.
    carry: Vec<u8>,
    /// The carried line was longer than [`CARRY`].
    carry_cut: bool,
    /// A Transfer-Encoding header was seen: the body is chunked (hyper
    /// refuses a request whose coding is anything else).
    chunked: bool,
    content_length: Length,
}

/// Enough of a header line to read a Content-Length.
const CARRY: usize = 64;

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Length {
    #[default]
    Absent,
    Is(u64),
    /// Unreadable or conflicting: hyper refuses the request.
    Invalid,
}

/// How the body after a head is framed.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    None,
    Length(u64),
    Chunked {
        also_length: bool,
    },
    /// Hyper will refuse the head; where a body would end is not known.
    Unknown,
}

#[derive(Debug, PartialEq, Eq)]
enum HeadVerdict {
    /// More head to come.
    Partial,
    /// The head ends before `body_at` in this read.
    Complete {
        body_at: usize,
        body: Body,
    },
    RequestLineTooLong,
    HeadTooLarge,
    /// An HTTP major version other than 1: 505.
    VersionNotSupported,
}

impl HeadScan {
    /// Scan the next bytes of the head. The request line's version may be
    /// rewritten in place (HTTP/1.2 → HTTP/1.1, RFC 9110 2.5).
    fn feed(&mut self, data: &mut [u8], limit: usize) -> HeadVerdict {
        let mut from = 0;
        // The request line, when its end is in this read: checked after the
        // loop, which only reads `data`.
        let mut request_line: Option<(usize, usize)> = None;
        let mut verdict = None;
        for lf in memchr::memchr_iter(b'\n', data) {
            let line = &data[from..lf];
            let has_content = self.line_has_content || line.iter().any(|b| *b != b'\r');
            if self.bytes + lf + 1 > limit {
                verdict = Some(self.too_large());
                break;
            }
            if !has_content && self.lines > 0 {
                verdict = Some(HeadVerdict::Complete {
                    body_at: lf + 1,
                    body: self.body(),
                });
                break;
            }
            if has_content {
                if self.lines == 0 {
                    request_line = Some((from, lf));
                } else if self.carry.is_empty() {
                    self.header_line(line, false);
                } else {
                    let mut whole = std::mem::take(&mut self.carry);
                    let room = CARRY.saturating_sub(whole.len());
                    whole.extend_from_slice(&line[..room.min(line.len())]);
                    let cut = self.carry_cut || line.len() > room;
                    self.header_line(&whole, cut);
                    self.carry = whole;
                }
                // Empty lines before the request line are skipped, as RFC 9112 allows.
                self.lines += 1;
            }
            self.line_has_content = false;
            self.carry.clear();
            self.carry_cut = false;
            from = lf + 1;
        }
        if let Some((start, end)) = request_line {
            if !check_version(&mut data[start..end]) {
                return HeadVerdict::VersionNotSupported;
            }
        }
        if let Some(v) = verdict {
            return v;
        }
        let rest = &data[from..];
        if rest.iter().any(|b| *b != b'\r') {
            self.line_has_content = true;
        }
        if self.lines > 0 && !rest.is_empty() {
            let room = CARRY.saturating_sub(self.carry.len());
            self.carry.extend_from_slice(&rest[..room.min(rest.len())]);
            self.carry_cut |= rest.len() > room;
        }
        self.bytes += data.len();
        if self.bytes > limit {
            return self.too_large();
        }
        HeadVerdict::Partial
    }

    /// Note the framing headers. `cut`: only the line's first bytes are here.
    fn header_line(&mut self, line: &[u8], cut: bool) {
        const TE: &[u8] = b"transfer-encoding:";
        const CL: &[u8] = b"content-length:";
        if line.len() >= TE.len() && line[..TE.len()].eq_ignore_ascii_case(TE) {
            self.chunked = true;
        } else if line.len() >= CL.len() && line[..CL.len()].eq_ignore_ascii_case(CL) {
            let value = line[CL.len()..].trim_ascii();
            let parsed = match value {
                _ if cut || value.is_empty() || !value.iter().all(u8::is_ascii_digit) => None,
                _ => std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok()),
            };
            self.content_length = match (self.content_length, parsed) {
                (Length::Absent, Some(n)) => Length::Is(n),
                (Length::Is(m), Some(n)) if m == n => Length::Is(n),
                _ => Length::Invalid,
            };
        }
    }

    fn body(&self) -> Body {
        match (self.chunked, self.content_length) {
            (true, length) => Body::Chunked {
                also_length: length != Length::Absent,
            },
            (false, Length::Absent | Length::Is(0)) => Body::None,
            (false, Length::Is(n)) => Body::Length(n),
            (false, Length::Invalid) => Body::Unknown,
        }
    }

    fn too_large(&self) -> HeadVerdict {
        if self.lines == 0 {
            HeadVerdict::RequestLineTooLong
        } else {
            HeadVerdict::HeadTooLarge
        }
    }
}

/// The version at the end of a request line (`line` without its LF): false
/// for HTTP/2 and later (505, as nginx), HTTP/1.x with x > 1 rewritten as
/// 1.1. Anything else is left to hyper's parser, which answers 400; so is a
/// version split between two reads (rare; hyper then answers 400).
fn check_version(line: &mut [u8]) -> bool {
    let line = match line.last() {
        Some(b'\r') => {
            let n = line.len() - 1;
            &mut line[..n]
        }
        _ => line,
    };
    let Some(start) = line.len().checked_sub(9) else {
        return true;
    };
    let v = &mut line[start..];
    if !(v[0] == b' '
        && v[1..6] == *b"HTTP/"
        && v[6].is_ascii_digit()
        && v[7] == b'.'
        && v[8].is_ascii_digit())
    {
        return true;
    }
    match v[6] {
        b'0' => true,
        b'1' => {
            if v[8] > b'1' {
                v[8] = b'1';
            }
            true
        }
        _ => false,
    }
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading a chunk-size: `digits` hex digits so far.
    Size {
        digits: u8,
    },
    /// Whitespace after the size (BWS before `;`).
    SizeSpace,
    /// In a chunk extension.
    Extension,
    /// CR seen at the end of a size line.
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer field line, or of the final CRLF.
    TrailerStart,
    TrailerLine,
    TrailerLf,
    EndLf,
}

/// Why a chunked body was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FramingError {
    ChunkSize,
    ChunkSizeTooLarge,
    ChunkExtension,
    ChunkLineEnd,
    Trailer,
    /// The chunk sizes declared so far add up to more than client_max_body_size.
    OverBodyLimit,
    /// Content-Length beside Transfer-Encoding (RFC 9112 6.1 lets a server
    /// refuse it; nginx does).
    ContentLengthWithChunked,
}

impl FramingError {
    pub fn status(self) -> http::StatusCode {
        match self {
            FramingError::OverBodyLimit => http::StatusCode::PAYLOAD_TOO_LARGE,
            _ => http::StatusCode::BAD_REQUEST,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            FramingError::ChunkSize => "malformed chunk size",
            FramingError::ChunkSizeTooLarge => "chunk size out of range",
            FramingError::ChunkExtension => "control byte in a chunk extension",
            FramingError::ChunkLineEnd => "chunk line not ended by CRLF",
            FramingError::Trailer => "malformed trailer section",
            FramingError::OverBodyLimit => "declared chunk sizes over client_max_body_size",
            FramingError::ContentLengthWithChunked => "both Content-Length and Transfer-Encoding",
        }
    }

    /// As stored in the connection's state (0 = none).
    pub fn code(self) -> u8 {
        self as u8 + 1
    }

    pub fn from_code(code: u8) -> Option<FramingError> {
        Self::ALL.get(usize::from(code).checked_sub(1)?).copied()
    }

    /// Every one, in declaration order (so that `ALL[code - 1]` is the one).
    const ALL: [FramingError; 7] = [
        FramingError::ChunkSize,
        FramingError::ChunkSizeTooLarge,
        FramingError::ChunkExtension,
        FramingError::ChunkLineEnd,
        FramingError::Trailer,
        FramingError::OverBodyLimit,
        FramingError::ContentLengthWithChunked,
    ];
}

pub enum ChunkVerdict {
    /// All of it belongs to the body; more to come.
    More,
    /// The body ends before this offset.
    Done(usize),
    /// The byte at this offset breaks the framing.
    Bad(usize, FramingError),
}

/// Follows a chunked body through its reads.
pub struct ChunkScan {
    at: Chunk,
    size: u64,
    /// Sum of the chunk sizes declared so far.
    pub declared: u64,
}

/// nginx's bound: a chunk size must fit an off_t.
const MAX_CHUNK_SIZE: u64 = i64::MAX as u64;

impl Default for ChunkScan {
    fn default() -> Self {
        ChunkScan {
            at: Chunk::Size { digits: 0 },
            size: 0,
            declared: 0,
        }
    }
}

impl ChunkScan {
    /// Scan the next bytes of the body. `limit`: client_max_body_size once
    /// known (0: not known yet, or no limit).
    pub fn feed(&mut self, data: &[u8], limit: u64) -> ChunkVerdict {
        let mut i = 0;
        while i < data.len() {
            if self.at == Chunk::Data {
                let take = self.size.min((data.len() - i) as u64);
                self.size -= take;
                i += take as usize;
                if self.size == 0 {
                    self.at = Chunk::DataCr;
                }
                continue;
            }
            let b = data[i];
            let next = match (self.at, b) {
                (Chunk::Size { digits }, _) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0));
                    self.size = match self.size.checked_mul(16).map(|s| s + digit) {
                        Some(s) if s <= MAX_CHUNK_SIZE => s,
                        _ => return ChunkVerdict::Bad(i, FramingError::ChunkSizeTooLarge),
                    };
                    Chunk::Size {
                        digits: digits.saturating_add(1),
                    }
                }
                (Chunk::Size { digits: 0 }, _) => {
                    return ChunkVerdict::Bad(i, FramingError::ChunkSize)
                }
                (Chunk::Size { .. } | Chunk::SizeSpace, b' ' | b'\t') => Chunk::SizeSpace,
                (Chunk::Size { .. } | Chunk::SizeSpace | Chunk::Extension, b';') => {
                    Chunk::Extension
                }
                (Chunk::Size { .. } | Chunk::SizeSpace | Chunk::Extension, b'\r') => Chunk::SizeLf,
                (Chunk::Size { .. } | Chunk::SizeSpace, _) => {
                    return ChunkVerdict::Bad(i, FramingError::ChunkSize)
                }
                (Chunk::Extension, _) if is_field_byte(b) => Chunk::Extension,
                (Chunk::Extension, _) => return ChunkVerdict::Bad(i, FramingError::ChunkExtension),
                (Chunk::SizeLf, b'\n') => {
                    self.declared = self.declared.saturating_add(self.size);
                    if limit > 0 && self.declared > limit {
                        return ChunkVerdict::Bad(i, FramingError::OverBodyLimit);
                    }
                    if self.size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data
                    }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => {
                    self.size = 0;
                    Chunk::Size { digits: 0 }
                }
                (Chunk::SizeLf | Chunk::DataCr | Chunk::DataLf, _) => {
                    return ChunkVerdict::Bad(i, FramingError::ChunkLineEnd)
                }
                (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
                (Chunk::EndLf, b'\n') => return ChunkVerdict::Done(i + 1),
                (Chunk::TrailerLine, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerLf, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerStart | Chunk::TrailerLine, _) if is_field_byte(b) => {
                    Chunk::TrailerLine
                }
                (Chunk::TrailerStart | Chunk::TrailerLine | Chunk::TrailerLf | Chunk::EndLf, _) => {
                    return ChunkVerdict::Bad(i, FramingError::Trailer)
                }
                (Chunk::Data, _) => unreachable!("data is skipped above"),
            };
            self.at = next;
            i += 1;
        }
        ChunkVerdict::More
    }
}

/// A byte that may appear in a field value or chunk extension: visible
/// ASCII, space, tab, obs-text. Not CR, LF, NUL or other controls.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(chunks: &[&[u8]], limit: usize) -> String {
        let mut s = HeadScan::default();
        for c in chunks {
            let mut c = c.to_vec();
            match s.feed(&mut c, limit) {
                HeadVerdict::Partial => {}
                HeadVerdict::Complete { body_at, body } => {
                    let body = match body {
                        Body::None => String::new(),
                        other => format!(" {other:?}"),
                    };
                    return format!("complete at {body_at}{body}");
                }
                HeadVerdict::RequestLineTooLong => return "414".into(),
                HeadVerdict::HeadTooLarge => return "431".into(),
                HeadVerdict::VersionNotSupported => return "505".into(),
            }
        }
        "partial".into()
    }

    #[test]
    fn head_scan() {
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"], 100),
            "complete at 27"
        );
        assert_eq!(
            scan(&[b"GET / HTTP/1.1\r\nHo", b"st: a\r\n", b"\r", b"\n"], 100),
            "complete at 1"
        );
        assert_eq!(scan(&[b"\r\nGET / HTTP/1.1\r\n"], 100), "partial");
        let long_line = [b"GET /".as_slice(), &[b'a'; 200], b" HTTP/1.1\r\n\r\n"].concat();
        assert_eq!(scan(&[&long_line], 100), "414");
        let long_header = [
            b"GET / HTTP/1.1\r\nX: ".as_slice(),
            &[b'a'; 200],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(scan(&[&long_header], 100), "431");
        // A body after a complete head is not counted.
        let with_body = [
            b"POST / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice(),
            &[b'x'; 500],
        ]
        .concat();
        assert_eq!(scan(&[&with_body], 100), "complete at 28");
        let with_length = b"POST / HTTP/1.1\r\nContent-Length:  12 \r\n\r\n";
        assert_eq!(scan(&[with_length], 100), "complete at 41 Length(12)");
        // A request line arriving in small pieces is still caught.
        let pieces: Vec<&[u8]> = std::iter::repeat_n(&b"aaaaaaaaaa"[..], 20).collect();
        assert_eq!(scan(&pieces, 100), "414");
    }

    #[test]
    fn transfer_encoding_is_seen_in_pieces() {
        assert_eq!(
            scan(
                &[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"],
                100
            ),
            "complete at 47 Chunked { also_length: false }"
        );
        assert_eq!(
            scan(
                &[
                    b"POST / HTTP/1.1\r\nTrans",
                    b"fer-ENCODING",
                    b": chunked\r\n\r\n"
                ],
                100
            ),
            "complete at 13 Chunked { also_length: false }"
        );
        assert_eq!(
            scan(
                &[b"POST / HTTP/1.1\r\nX-Transfer-Encoding: chunked\r\n\r\n"],
                100
            ),
            "complete at 49"
        );
        assert_eq!(
            scan(
                &[b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"],
                100
            ),
            "complete at 66 Chunked { also_length: true }"
        );
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n"], 100),
            "complete at 38 Length(5)"
        );
    }

    #[test]
    fn content_lengths() {
        let head = |lines: &[&[u8]]| {
            let mut pieces: Vec<&[u8]> = vec![b"POST / HTTP/1.1\r\n"];
            pieces.extend_from_slice(lines);
            pieces.push(b"\r\n");
            let whole = pieces.concat();
            scan(&[&whole], 1000)
                .split_once(' ')
                .and_then(|(_, r)| r.split_once(' '))
                .map_or(String::new(), |(_, r)| {
                    r.split_once(' ').map_or("", |x| x.1).to_string()
                })
        };
        assert_eq!(head(&[b"Content-Length: 0\r\n"]), "");
        assert_eq!(
            head(&[b"Content-Length: 7\r\nContent-Length: 7\r\n"]),
            "Length(7)"
        );
        assert_eq!(
            head(&[b"Content-Length: 7\r\nContent-Length: 8\r\n"]),
            "Unknown"
        );
        assert_eq!(head(&[b"Content-Length: +7\r\n"]), "Unknown");
        assert_eq!(head(&[b"Content-Length: 7, 7\r\n"]), "Unknown");
        assert_eq!(
            head(&[b"Content-Length: 99999999999999999999999\r\n"]),
            "Unknown"
        );
        // Split between reads, and longer than the carried start: not readable.
        assert_eq!(
            scan(
                &[b"POST / HTTP/1.1\r\nContent-Le", b"ngth: 9\r\n\r\n"],
                1000
            ),
            "complete at 11 Length(9)"
        );
        let spaced = [b"tent-Length:".as_slice(), &[b' '; 80], b"9\r\n\r\n"].concat();
        assert_eq!(
            scan(&[b"POST / HTTP/1.1\r\nX: y\r\nCon", &spaced], 1000),
            format!("complete at {} Unknown", spaced.len())
        );
    }

    /// The follower over whole requests, as the wrapper feeds it.
    fn follow(reads: &[&[u8]], next_request: bool) -> (Vec<Verdict>, Option<FramingError>, u64) {
        let state = ConnState::new(false);
        let mut f = Framing::default();
        let mut verdicts = Vec::new();
        for r in reads {
            let mut r = r.to_vec();
            verdicts.push(f.feed(&mut r, &state, 1000, next_request));
        }
        let error = (1..=f.heads().max(1)).find_map(|n| state.framing_error(n));
        (verdicts, error, f.heads())
    }

    #[test]
    fn follows_pipelined_requests() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".as_slice();
        let post = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello".as_slice();
        let chunked =
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .as_slice();
        let all = [get, post, chunked, get].concat();
        assert_eq!(follow(&[&all], true), (vec![Verdict::Fine], None, 4));
        // Byte by byte: the same.
        let bytes: Vec<&[u8]> = all.chunks(1).collect();
        let (verdicts, error, heads) = follow(&bytes, true);
        assert!(verdicts.iter().all(|v| *v == Verdict::Fine));
        assert_eq!((error, heads), (None, 4));
        // A Content-Length body that looks like a head is skipped, not scanned.
        let tricky = b"POST / HTTP/1.1\r\nContent-Length: 22\r\n\r\nGET / HTTP/2.0\r\nX: y\r\n\r\n";
        assert_eq!(follow(&[tricky], true).0, vec![Verdict::Fine]);
    }

    #[test]
    fn refuses_framing_of_the_right_request() {
        let get = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n".as_slice();
        let cl_te = b"POST /second HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
            Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
            .as_slice();
        let state = ConnState::new(false);
        let mut f = Framing::default();
        let verdict = f.feed(&mut [get, cl_te].concat(), &state, 1000, true);
        assert_eq!((verdict, f.heads()), (Verdict::Fine, 2));
        assert_eq!(state.framing_error(1), None);
        assert_eq!(
            state.framing_error(2),
            Some(FramingError::ContentLengthWithChunked)
        );
        // A bad chunk: the bytes before it are handed over, then reads fail.
        let bad = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5;a\0b\r\n".as_slice();
        let (verdicts, error, _) = follow(&[bad], true);
        assert_eq!(verdicts, vec![Verdict::Cut(bad.len() - 4)]);
        assert_eq!(error, Some(FramingError::ChunkExtension));
    }

    #[test]
    fn answers_heads_only_when_next() {
        let v2 = b"GET / HTTP/2.0\r\nHost: x\r\n\r\n".as_slice();
        assert_eq!(
            follow(&[v2], true).0,
            vec![Verdict::Reject(
                StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                "HTTP major version other than 1"
            )]
        );
        // Behind a request in flight: left to hyper.
        assert_eq!(follow(&[v2], false).0, vec![Verdict::Fine]);
        // Pipelined behind a request in the same read: left to hyper too.
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".as_slice();
        assert_eq!(follow(&[&[get, v2].concat()], true).0, vec![Verdict::Fine]);
    }

    #[test]
    fn declared_chunks_against_the_routed_limit() {
        let state = ConnState::new(false);
        let mut f = Framing::default();
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n80000\r\n";
        assert_eq!(
            f.feed(&mut head.to_vec(), &state, 1000, true),
            Verdict::Fine
        );
        // The handler routes request 1 to a location allowing 1 MiB: fine so far.
        assert!(state.limit_body(1, 1 << 20));
        let mut data = [&[b'x'; 0x80000][..], b"\r\n80001\r\n"].concat();
        assert_eq!(
            f.feed(&mut data, &state, 1000, false),
            Verdict::Cut(0x80000 + 2 + 6)
        );
        assert_eq!(state.framing_error(1), Some(FramingError::OverBodyLimit));
        // Declared before the handler routed: the handler's check refuses it.
        let state = ConnState::new(false);
        let mut f = Framing::default();
        let head = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n200000\r\n";
        assert_eq!(
            f.feed(&mut head.to_vec(), &state, 1000, true),
            Verdict::Fine
        );
        assert!(!state.limit_body(1, 1 << 20));
        assert!(state.limit_body(1, 0));
    }

    #[test]
    fn versions() {
        let line = |l: &[u8]| {
            let mut l = l.to_vec();
            let ok = check_version(&mut l);
            (ok, String::from_utf8(l).unwrap())
        };
        assert_eq!(line(b"GET / HTTP/1.1\r"), (true, "GET / HTTP/1.1\r".into()));
        assert_eq!(line(b"GET / HTTP/1.0"), (true, "GET / HTTP/1.0".into()));
        assert_eq!(line(b"GET / HTTP/1.2\r"), (true, "GET / HTTP/1.1\r".into()));
        assert_eq!(line(b"GET / HTTP/1.9\r"), (true, "GET / HTTP/1.1\r".into()));
        assert!(!line(b"GET / HTTP/2.0\r").0);
        assert!(!line(b"GET / HTTP/3.0\r").0);
        // Left to hyper (400): not a version ginx can judge.
        assert!(line(b"GET / http/2.0\r").0);
        assert!(line(b"GET /HTTP/2.0\r").0);
        assert!(line(b"TTP/2.0").0);
        assert_eq!(scan(&[b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"], 100), "505");
    }

    fn chunks(pieces: &[&[u8]], limit: u64) -> String {
        let mut s = ChunkScan::default();
        let mut offset = 0;
        for p in pieces {
            match s.feed(p, limit) {
                ChunkVerdict::More => offset += p.len(),
                ChunkVerdict::Done(at) => return format!("done at {}", offset + at),
                ChunkVerdict::Bad(at, e) => return format!("{e:?} at {}", offset + at),
            }
        }
        format!("more ({} declared)", s.declared)
    }

    #[test]
    fn chunked_framing() {
        assert_eq!(chunks(&[b"5\r\nhello\r\n0\r\n\r\nGET"], 0), "done at 15");
        assert_eq!(
            chunks(&[b"5\r", b"\nhel", b"lo\r\n0\r\n", b"\r\n"], 0),
            "done at 15"
        );
        assert_eq!(
            chunks(&[b"5 ; a=b;c=\"d e\"\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"], 0),
            "done at 37"
        );
        assert_eq!(chunks(&[b"a\r\n0123456789\r\n"], 0), "more (10 declared)");
        assert_eq!(chunks(&[b"5;a\0b\r\n"], 0), "ChunkExtension at 3");
        assert_eq!(chunks(&[b"5;a\x01b\r\n"], 0), "ChunkExtension at 3");
        assert_eq!(chunks(&[b"5;a\nhello"], 0), "ChunkExtension at 3");
        assert_eq!(chunks(&[b"5\nhello"], 0), "ChunkSize at 1");
        assert_eq!(chunks(&[b"5\r\nhello\n0\r\n\r\n"], 0), "ChunkLineEnd at 8");
        assert_eq!(chunks(&[b"0\r\n\n"], 0), "Trailer at 3");
        assert_eq!(chunks(&[b"0\r\nX: y\n\r\n"], 0), "Trailer at 7");
        assert_eq!(chunks(&[b"0\r\nX: \0\r\n\r\n"], 0), "Trailer at 6");
        assert_eq!(chunks(&[b"0x5\r\n"], 0), "ChunkSize at 1");
        assert_eq!(chunks(&[b"-5\r\n"], 0), "ChunkSize at 0");
        assert_eq!(chunks(&[b"\r\n"], 0), "ChunkSize at 0");
        assert_eq!(
            chunks(&[b"FFFFFFFFFFFFFFFF\r\n"], 0),
            "ChunkSizeTooLarge at 15"
        );
        assert_eq!(
            chunks(&[b"7FFFFFFFFFFFFFFF\r\nab"], 0),
            format!("more ({} declared)", i64::MAX)
        );
        // Declared sizes against client_max_body_size, before the data comes.
        assert_eq!(chunks(&[b"200000\r\nhello"], 1 << 20), "OverBodyLimit at 7");
        assert_eq!(
            chunks(&[b"80000\r\n", &[b'x'; 0x80000], b"\r\n80001\r\n"], 1 << 20),
            format!("OverBodyLimit at {}", 7 + 0x80000 + 2 + 6)
        );
        assert_eq!(chunks(&[b"100000\r\n"], 1 << 20), "more (1048576 declared)");
    }

    #[test]
    fn framing_error_codes_round_trip() {
        for e in FramingError::ALL {
            assert_eq!(FramingError::from_code(e.code()), Some(e));
        }
        assert_eq!(FramingError::from_code(0), None);
    }
}
