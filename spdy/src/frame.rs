//! SPDY/3 frames: the 8-byte frame head, every control frame, DATA frames, and their wire codec.
//!
//! Control frame: `1 | version:15 | type:16 | flags:8 | length:24 | payload`.
//! Data frame: `0 | stream id:31 | flags:8 | length:24 | payload`. All integers are big-endian.

use crate::error::{Error, Result};
use crate::headers::{HeaderCompressor, HeaderDecompressor, HeaderList};

/// The only protocol version spoken.
pub const VERSION: u16 = 3;
/// Size of the common frame head.
pub const HEAD_LEN: usize = 8;
/// Largest payload the 24-bit length field can describe.
pub const MAX_FRAME_LEN: usize = (1 << 24) - 1;

/// Control frame type SYN_STREAM.
pub const TYPE_SYN_STREAM: u16 = 1;
/// Control frame type SYN_REPLY.
pub const TYPE_SYN_REPLY: u16 = 2;
/// Control frame type RST_STREAM.
pub const TYPE_RST_STREAM: u16 = 3;
/// Control frame type SETTINGS.
pub const TYPE_SETTINGS: u16 = 4;
/// Control frame type PING.
pub const TYPE_PING: u16 = 6;
/// Control frame type GOAWAY.
pub const TYPE_GOAWAY: u16 = 7;
/// Control frame type HEADERS.
pub const TYPE_HEADERS: u16 = 8;
/// Control frame type WINDOW_UPDATE.
pub const TYPE_WINDOW_UPDATE: u16 = 9;

/// FLAG_FIN on DATA, SYN_STREAM, SYN_REPLY and HEADERS: the sender is done with the stream.
pub const FLAG_FIN: u8 = 0x01;
/// FLAG_UNIDIRECTIONAL on SYN_STREAM: the receiver must not send on the stream.
pub const FLAG_UNIDIRECTIONAL: u8 = 0x02;
/// FLAG_SETTINGS_CLEAR_SETTINGS on SETTINGS.
pub const FLAG_CLEAR_SETTINGS: u8 = 0x01;

/// RST_STREAM status PROTOCOL_ERROR.
pub const RST_PROTOCOL_ERROR: u32 = 1;
/// RST_STREAM status INVALID_STREAM.
pub const RST_INVALID_STREAM: u32 = 2;
/// RST_STREAM status REFUSED_STREAM.
pub const RST_REFUSED_STREAM: u32 = 3;
/// RST_STREAM status CANCEL (what spdystream's `Reset` sends).
pub const RST_CANCEL: u32 = 5;
/// RST_STREAM status INTERNAL_ERROR.
pub const RST_INTERNAL_ERROR: u32 = 6;

/// GOAWAY status OK.
pub const GOAWAY_OK: u32 = 0;
/// GOAWAY status PROTOCOL_ERROR.
pub const GOAWAY_PROTOCOL_ERROR: u32 = 1;

/// The decoded 8-byte head common to all frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameHead {
    /// A control frame head.
    Control {
        /// Protocol version (must be 3).
        version: u16,
        /// Control frame type.
        frame_type: u16,
        /// Flags byte.
        flags: u8,
        /// Payload length.
        length: usize,
    },
    /// A DATA frame head.
    Data {
        /// Stream the data belongs to.
        stream_id: u32,
        /// Flags byte (FLAG_FIN).
        flags: u8,
        /// Payload length.
        length: usize,
    },
}

impl FrameHead {
    /// Parses the first 8 bytes of a frame.
    pub fn parse(b: &[u8; HEAD_LEN]) -> Self {
        let first = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let flags = b[4];
        let length = (u32::from_be_bytes([0, b[5], b[6], b[7]])) as usize;
        if first & 0x8000_0000 != 0 {
            FrameHead::Control {
                version: ((first >> 16) & 0x7fff) as u16,
                frame_type: (first & 0xffff) as u16,
                flags,
                length,
            }
        } else {
            FrameHead::Data {
                stream_id: first & 0x7fff_ffff,
                flags,
                length,
            }
        }
    }

    /// Length of the payload that follows the head.
    pub fn length(&self) -> usize {
        match *self {
            FrameHead::Control { length, .. } | FrameHead::Data { length, .. } => length,
        }
    }
}

/// One SETTINGS entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// Per-entry flags (PERSIST_VALUE 1, PERSISTED 2).
    pub flags: u8,
    /// Setting id (24 bits), e.g. 7 = INITIAL_WINDOW_SIZE.
    pub id: u32,
    /// Setting value.
    pub value: u32,
}

/// A SPDY/3 frame with its header block (if any) decompressed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA.
    Data {
        /// Stream id.
        stream_id: u32,
        /// FLAG_FIN set: last frame from this sender on the stream.
        fin: bool,
        /// Payload.
        data: Vec<u8>,
    },
    /// SYN_STREAM: opens a stream.
    SynStream {
        /// New stream id (odd from the client, even from the server).
        stream_id: u32,
        /// Associated stream (0: none).
        associated_id: u32,
        /// Priority 0 (highest) to 7.
        priority: u8,
        /// Credential slot.
        slot: u8,
        /// Flags (FLAG_FIN, FLAG_UNIDIRECTIONAL).
        flags: u8,
        /// Request headers.
        headers: HeaderList,
    },
    /// SYN_REPLY: accepts a stream.
    SynReply {
        /// Stream id.
        stream_id: u32,
        /// FLAG_FIN set.
        fin: bool,
        /// Reply headers.
        headers: HeaderList,
    },
    /// RST_STREAM: aborts a stream.
    RstStream {
        /// Stream id.
        stream_id: u32,
        /// Status code (RST_*).
        status: u32,
    },
    /// SETTINGS.
    Settings {
        /// FLAG_CLEAR_SETTINGS set.
        clear: bool,
        /// Entries.
        entries: Vec<Setting>,
    },
    /// PING (echoed back unchanged by the receiver when the sender's parity is not its own).
    Ping {
        /// Ping id.
        id: u32,
    },
    /// GOAWAY: the sender accepts no new streams.
    GoAway {
        /// Last stream id the sender accepted from the receiver.
        last_good_stream_id: u32,
        /// Status code (GOAWAY_*).
        status: u32,
    },
    /// HEADERS: more headers for a stream.
    Headers {
        /// Stream id.
        stream_id: u32,
        /// FLAG_FIN set.
        fin: bool,
        /// Headers.
        headers: HeaderList,
    },
    /// WINDOW_UPDATE.
    WindowUpdate {
        /// Stream id.
        stream_id: u32,
        /// Window increase (31 bits).
        delta: u32,
    },
    /// A control frame of a type SPDY/3 does not define here (e.g. the obsolete NOOP or
    /// CREDENTIAL); the spec says to ignore it.
    Unknown {
        /// Its type.
        frame_type: u16,
    },
}

fn be32(b: &[u8], at: usize) -> Result<u32> {
    b.get(at..at + 4)
        .and_then(|s| <[u8; 4]>::try_from(s).ok())
        .map(u32::from_be_bytes)
        .ok_or_else(|| Error::Protocol("control frame payload truncated".into()))
}

fn need(payload: &[u8], min: usize, what: &str) -> Result<()> {
    if payload.len() < min {
        return Err(Error::Protocol(format!(
            "{what} frame of {} bytes, needs at least {min}",
            payload.len()
        )));
    }
    Ok(())
}

fn nonzero(stream_id: u32, what: &str) -> Result<u32> {
    if stream_id == 0 {
        return Err(Error::Protocol(format!("{what} frame on stream 0")));
    }
    Ok(stream_id)
}

impl Frame {
    /// Decodes a frame from its head and exactly `head.length()` payload bytes (a DATA frame
    /// keeps the buffer as its data). Header blocks are inflated on `dec`, which must see every
    /// header-bearing frame of the direction in order.
    pub fn decode(
        head: FrameHead,
        payload: Vec<u8>,
        dec: &mut HeaderDecompressor,
    ) -> Result<Frame> {
        if payload.len() != head.length() {
            return Err(Error::Protocol("frame payload length mismatch".into()));
        }
        let (version, frame_type, flags) = match head {
            FrameHead::Data {
                stream_id, flags, ..
            } => {
                return Ok(Frame::Data {
                    stream_id: nonzero(stream_id, "DATA")?,
                    fin: flags & FLAG_FIN != 0,
                    data: payload,
                })
            }
            FrameHead::Control {
                version,
                frame_type,
                flags,
                ..
            } => (version, frame_type, flags),
        };
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        let payload = payload.as_slice();
        let id31 = |at| be32(payload, at).map(|w| w & 0x7fff_ffff);
        Ok(match frame_type {
            TYPE_SYN_STREAM => {
                need(payload, 10, "SYN_STREAM")?;
                let headers = dec.decompress(&payload[10..])?;
                Frame::SynStream {
                    stream_id: nonzero(id31(0)?, "SYN_STREAM")?,
                    associated_id: id31(4)?,
                    priority: payload[8] >> 5,
                    slot: payload[9],
                    flags,
                    headers,
                }
            }
            TYPE_SYN_REPLY => {
                need(payload, 4, "SYN_REPLY")?;
                let headers = dec.decompress(&payload[4..])?;
                Frame::SynReply {
                    stream_id: nonzero(id31(0)?, "SYN_REPLY")?,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            TYPE_HEADERS => {
                need(payload, 4, "HEADERS")?;
                let headers = dec.decompress(&payload[4..])?;
                Frame::Headers {
                    stream_id: nonzero(id31(0)?, "HEADERS")?,
                    fin: flags & FLAG_FIN != 0,
                    headers,
                }
            }
            TYPE_RST_STREAM => {
                need(payload, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: nonzero(id31(0)?, "RST_STREAM")?,
                    status: be32(payload, 4)?,
                }
            }
            TYPE_SETTINGS => {
                need(payload, 4, "SETTINGS")?;
                let count = be32(payload, 0)? as usize;
                if count > (payload.len() - 4) / 8 {
                    return Err(Error::Protocol(format!(
                        "SETTINGS claims {count} entries in {} bytes",
                        payload.len()
                    )));
                }
                let mut entries = Vec::with_capacity(count);
                for i in 0..count {
                    let word = be32(payload, 4 + 8 * i)?;
                    entries.push(Setting {
                        flags: (word >> 24) as u8,
                        id: word & 0x00ff_ffff,
                        value: be32(payload, 8 + 8 * i)?,
                    });
                }
                Frame::Settings {
                    clear: flags & FLAG_CLEAR_SETTINGS != 0,
                    entries,
                }
            }
            TYPE_PING => {
                need(payload, 4, "PING")?;
                Frame::Ping {
                    id: be32(payload, 0)?,
                }
            }
            TYPE_GOAWAY => {
                need(payload, 4, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: id31(0)?,
                    status: if payload.len() >= 8 {
                        be32(payload, 4)?
                    } else {
                        GOAWAY_OK
                    },
                }
            }
            TYPE_WINDOW_UPDATE => {
                need(payload, 8, "WINDOW_UPDATE")?;
                Frame::WindowUpdate {
                    stream_id: id31(0)?,
                    delta: be32(payload, 4)? & 0x7fff_ffff,
                }
            }
            other => Frame::Unknown { frame_type: other },
        })
    }

    /// Appends the wire form of the frame to `out`, deflating any header block on `enc`.
    pub fn encode(&self, out: &mut Vec<u8>, enc: &mut HeaderCompressor) -> Result<()> {
        match self {
            Frame::Data {
                stream_id,
                fin,
                data,
            } => {
                if data.len() > MAX_FRAME_LEN {
                    return Err(Error::Encode(format!(
                        "DATA payload of {} bytes exceeds 2^24-1",
                        data.len()
                    )));
                }
                out.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                push_flags_len(out, u8::from(*fin), data.len());
                out.extend_from_slice(data);
            }
            Frame::SynStream {
                stream_id,
                associated_id,
                priority,
                slot,
                flags,
                headers,
            } => {
                let mut body = Vec::new();
                body.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
                body.extend_from_slice(&(associated_id & 0x7fff_ffff).to_be_bytes());
                body.push((priority & 0x7) << 5);
                body.push(*slot);
                enc.compress(headers, &mut body)?;
                control(out, TYPE_SYN_STREAM, *flags, &body)?;
            }
            Frame::SynReply {
                stream_id,
                fin,
                headers,
            }
            | Frame::Headers {
                stream_id,
                fin,
                headers,
            } => {
                let frame_type = if matches!(self, Frame::SynReply { .. }) {
                    TYPE_SYN_REPLY
                } else {
                    TYPE_HEADERS
                };
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                enc.compress(headers, &mut body)?;
                control(out, frame_type, u8::from(*fin), &body)?;
            }
            Frame::RstStream { stream_id, status } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, TYPE_RST_STREAM, 0, &body)?;
            }
            Frame::Settings { clear, entries } => {
                let count = u32::try_from(entries.len())
                    .map_err(|_| Error::Encode("too many SETTINGS entries".into()))?;
                let mut body = count.to_be_bytes().to_vec();
                for s in entries {
                    body.extend_from_slice(
                        &(u32::from(s.flags) << 24 | (s.id & 0xff_ffff)).to_be_bytes(),
                    );
                    body.extend_from_slice(&s.value.to_be_bytes());
                }
                control(out, TYPE_SETTINGS, u8::from(*clear), &body)?;
            }
            Frame::Ping { id } => control(out, TYPE_PING, 0, &id.to_be_bytes())?,
            Frame::GoAway {
                last_good_stream_id,
                status,
            } => {
                let mut body = (last_good_stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&status.to_be_bytes());
                control(out, TYPE_GOAWAY, 0, &body)?;
            }
            Frame::WindowUpdate { stream_id, delta } => {
                let mut body = (stream_id & 0x7fff_ffff).to_be_bytes().to_vec();
                body.extend_from_slice(&(delta & 0x7fff_ffff).to_be_bytes());
                control(out, TYPE_WINDOW_UPDATE, 0, &body)?;
            }
            Frame::Unknown { frame_type } => control(out, *frame_type, 0, &[])?,
        }
        Ok(())
    }
}

fn push_flags_len(out: &mut Vec<u8>, flags: u8, len: usize) {
    let len = len as u32;
    out.push(flags);
    out.extend_from_slice(&len.to_be_bytes()[1..]);
}

fn control(out: &mut Vec<u8>, frame_type: u16, flags: u8, body: &[u8]) -> Result<()> {
    if body.len() > MAX_FRAME_LEN {
        return Err(Error::Encode(format!(
            "control frame type {frame_type} of {} bytes exceeds 2^24-1",
            body.len()
        )));
    }
    out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    out.extend_from_slice(&frame_type.to_be_bytes());
    push_flags_len(out, flags, body.len());
    out.extend_from_slice(body);
    Ok(())
}

/// Decodes every complete frame at the start of `buf` (test and fuzz helper): returns the frames
/// and the number of bytes consumed; an incomplete trailing frame is left unconsumed.
pub fn decode_all(buf: &[u8], dec: &mut HeaderDecompressor) -> Result<(Vec<Frame>, usize)> {
    let mut frames = Vec::new();
    let mut pos = 0;
    while let Some(head) = buf.get(pos..pos + HEAD_LEN) {
        let mut h = [0u8; HEAD_LEN];
        h.copy_from_slice(head);
        let head = FrameHead::parse(&h);
        let Some(payload) = buf.get(pos + HEAD_LEN..pos + HEAD_LEN + head.length()) else {
            break;
        };
        frames.push(Frame::decode(head, payload.to_vec(), dec)?);
        pos += HEAD_LEN + head.length();
    }
    Ok((frames, pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: &Frame) -> Vec<u8> {
        let mut c = HeaderCompressor::new().unwrap();
        let mut out = Vec::new();
        f.encode(&mut out, &mut c).unwrap();
        out
    }

    fn dec(b: &[u8]) -> Result<Frame> {
        let mut d = HeaderDecompressor::new();
        let (frames, used) = decode_all(b, &mut d)?;
        assert_eq!(used, b.len());
        assert_eq!(frames.len(), 1);
        Ok(frames.into_iter().next().unwrap())
    }

    fn both(f: Frame, wire: &[u8]) {
        assert_eq!(enc(&f), wire, "encode {f:?}");
        assert_eq!(dec(wire).unwrap(), f, "decode");
    }

    #[test]
    fn data_frame_bytes() {
        both(
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: b"hi".to_vec(),
            },
            &[0, 0, 0, 3, 0, 0, 0, 2, b'h', b'i'],
        );
        both(
            Frame::Data {
                stream_id: 0x7fff_fffe,
                fin: true,
                data: vec![],
            },
            &[0x7f, 0xff, 0xff, 0xfe, 1, 0, 0, 0],
        );
    }

    #[test]
    fn rst_stream_bytes() {
        both(
            Frame::RstStream {
                stream_id: 5,
                status: RST_CANCEL,
            },
            &[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 5, 0, 0, 0, 5],
        );
    }

    #[test]
    fn settings_bytes() {
        both(
            Frame::Settings {
                clear: true,
                entries: vec![Setting {
                    flags: 1,
                    id: 7,
                    value: 65536,
                }],
            },
            &[
                0x80, 3, 0, 4, 1, 0, 0, 12, 0, 0, 0, 1, 1, 0, 0, 7, 0, 1, 0, 0,
            ],
        );
    }

    #[test]
    fn ping_goaway_window_update_bytes() {
        both(
            Frame::Ping { id: 0x0102_0304 },
            &[0x80, 3, 0, 6, 0, 0, 0, 4, 1, 2, 3, 4],
        );
        both(
            Frame::GoAway {
                last_good_stream_id: 7,
                status: GOAWAY_PROTOCOL_ERROR,
            },
            &[0x80, 3, 0, 7, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0, 0, 1],
        );
        both(
            Frame::WindowUpdate {
                stream_id: 1,
                delta: 0x1_0000,
            },
            &[0x80, 3, 0, 9, 0, 0, 0, 8, 0, 0, 0, 1, 0, 1, 0, 0],
        );
    }

    fn hl(p: &[(&str, &str)]) -> HeaderList {
        p.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn syn_stream_bytes_and_header_block() {
        let f = Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 2,
            slot: 0,
            flags: FLAG_FIN,
            headers: hl(&[("streamtype", "error")]),
        };
        let wire = enc(&f);
        assert_eq!(&wire[..4], &[0x80, 3, 0, 1]);
        assert_eq!(wire[4], FLAG_FIN);
        let len = u32::from_be_bytes([0, wire[5], wire[6], wire[7]]) as usize;
        assert_eq!(len, wire.len() - 8);
        assert_eq!(&wire[8..18], &[0, 0, 0, 1, 0, 0, 0, 0, 2 << 5, 0]);
        // The block inflates (with the dictionary) to the hand-computed plain block.
        let mut raw = flate2::Decompress::new(true);
        let mut plain = Vec::with_capacity(256);
        let err = raw
            .decompress_vec(&wire[18..], &mut plain, flate2::FlushDecompress::Sync)
            .unwrap_err();
        assert!(err.needs_dictionary().is_some());
        raw.set_dictionary(crate::dictionary::HEADER_DICTIONARY)
            .unwrap();
        let used = raw.total_in() as usize;
        raw.decompress_vec(
            &wire[18 + used..],
            &mut plain,
            flate2::FlushDecompress::Sync,
        )
        .unwrap();
        let mut want = vec![0, 0, 0, 1, 0, 0, 0, 10];
        want.extend_from_slice(b"streamtype");
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(b"error");
        assert_eq!(plain, want);
        assert_eq!(dec(&wire).unwrap(), f);
    }

    #[test]
    fn syn_reply_and_headers_round_trip() {
        for f in [
            Frame::SynReply {
                stream_id: 2,
                fin: false,
                headers: vec![],
            },
            Frame::Headers {
                stream_id: 9,
                fin: true,
                headers: hl(&[("a", "b")]),
            },
        ] {
            let wire = enc(&f);
            let ty = if matches!(f, Frame::SynReply { .. }) {
                2
            } else {
                8
            };
            assert_eq!(&wire[..4], &[0x80, 3, 0, ty]);
            assert_eq!(dec(&wire).unwrap(), f);
        }
    }

    #[test]
    fn unknown_control_frames_are_skipped() {
        let wire = [0x80, 3, 0, 5, 0, 0, 0, 2, 9, 9];
        assert_eq!(dec(&wire).unwrap(), Frame::Unknown { frame_type: 5 });
    }

    #[test]
    fn malformed_frames_are_errors() {
        // Wrong version.
        assert!(matches!(
            dec(&[0x80, 2, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1]),
            Err(Error::UnsupportedVersion(2))
        ));
        // Too short control payloads.
        for ty in [1u8, 2, 3, 4, 6, 7, 8, 9] {
            assert!(dec(&[0x80, 3, 0, ty, 0, 0, 0, 0]).is_err(), "type {ty}");
        }
        // Stream id 0.
        assert!(dec(&[0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(dec(&[0x80, 3, 0, 3, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 1]).is_err());
        // SETTINGS claiming more entries than present.
        assert!(dec(&[0x80, 3, 0, 4, 0, 0, 0, 4, 0xff, 0xff, 0xff, 0xff]).is_err());
        // SYN_STREAM whose header block is garbage.
        assert!(dec(&[0x80, 3, 0, 1, 0, 0, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2]).is_err());
    }

    #[test]
    fn garbage_never_panics() {
        // Deterministic pseudo-random bytes, plus every truncation of a valid stream.
        let mut x: u32 = 0x1234_5678;
        for round in 0..2000 {
            let len = (round % 64) + 1;
            let mut buf = Vec::with_capacity(len);
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                buf.push(x as u8);
            }
            if round % 2 == 0 && len >= 4 {
                buf[0] = 0x80;
                buf[1] = 3;
                buf[2] = 0;
                buf[3] = (round % 11) as u8;
            }
            let mut d = HeaderDecompressor::new();
            let _ = decode_all(&buf, &mut d);
        }
        let mut c = HeaderCompressor::new().unwrap();
        let mut wire = Vec::new();
        Frame::SynStream {
            stream_id: 1,
            associated_id: 0,
            priority: 0,
            slot: 0,
            flags: 0,
            headers: hl(&[("streamtype", "stdin")]),
        }
        .encode(&mut wire, &mut c)
        .unwrap();
        Frame::Ping { id: 1 }.encode(&mut wire, &mut c).unwrap();
        for cut in 0..wire.len() {
            let mut d = HeaderDecompressor::new();
            let _ = decode_all(&wire[..cut], &mut d);
        }
    }
}
