//! SPDY/3 name/value header blocks and their per-direction zlib streams.
//!
//! A header block is `u32 count` then, per pair, `u32 len, name, u32 len, value` (all big-endian).
//! Names are lower-case; several values of one name are joined by NUL bytes in one pair. The
//! block is deflated on a zlib stream that lives as long as the connection (one per direction),
//! primed with [`HEADER_DICTIONARY`], and each block ends with a SYNC_FLUSH so that the peer can
//! inflate it on its own.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use crate::dictionary::HEADER_DICTIONARY;
use crate::error::{Error, Result};

/// Header pairs as carried by SYN_STREAM, SYN_REPLY and HEADERS: lower-case names, one pair per
/// value (a name may repeat).
pub type HeaderList = Vec<(String, String)>;

/// Largest decompressed header block accepted from a peer (guards against zlib bombs).
pub const MAX_HEADER_BLOCK: usize = 1 << 20;

/// Serializes `headers` into an uncompressed SPDY/3 header block.
///
/// Names are lower-cased and pairs sharing a name are merged into one pair whose value is the
/// NUL-joined list (Go's framer rejects a block that repeats a name).
pub fn encode_block(headers: &[(String, String)]) -> Result<Vec<u8>> {
    let mut merged: Vec<(String, String)> = Vec::with_capacity(headers.len());
    for (name, value) in headers {
        let name = name.to_ascii_lowercase();
        match merged.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => {
                v.push('\0');
                v.push_str(value);
            }
            None => merged.push((name, value.clone())),
        }
    }
    let mut out = Vec::new();
    put_len(&mut out, merged.len())?;
    for (name, value) in &merged {
        put_len(&mut out, name.len())?;
        out.extend_from_slice(name.as_bytes());
        put_len(&mut out, value.len())?;
        out.extend_from_slice(value.as_bytes());
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<()> {
    let len = u32::try_from(len)
        .map_err(|_| Error::Encode(format!("header length {len} does not fit in 32 bits")))?;
    out.extend_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Parses an uncompressed SPDY/3 header block. Names are lower-cased; NUL-separated values
/// become separate pairs. Bytes after the last pair are ignored (as Go's framer does).
pub fn decode_block(block: &[u8]) -> Result<HeaderList> {
    let mut r = block;
    let count = take_u32(&mut r)? as usize;
    // Each pair needs at least its two length words: refuse counts the block cannot hold
    // before allocating anything.
    if count > r.len() / 8 {
        return Err(Error::Protocol(format!(
            "header block claims {count} pairs in {} bytes",
            r.len()
        )));
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_bytes(&mut r)?;
        let value = take_bytes(&mut r)?;
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let value = String::from_utf8_lossy(value);
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

fn take_u32(r: &mut &[u8]) -> Result<u32> {
    let Some((word, rest)) = r.split_first_chunk::<4>() else {
        return Err(Error::Protocol("header block truncated".into()));
    };
    *r = rest;
    Ok(u32::from_be_bytes(*word))
}

fn take_bytes<'a>(r: &mut &'a [u8]) -> Result<&'a [u8]> {
    let len = take_u32(r)? as usize;
    if len > r.len() {
        return Err(Error::Protocol("header block truncated".into()));
    }
    let (bytes, rest) = r.split_at(len);
    *r = rest;
    Ok(bytes)
}

/// The sending direction's zlib stream: deflates header blocks for the connection's lifetime.
pub struct HeaderCompressor {
    z: Compress,
}

impl std::fmt::Debug for HeaderCompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderCompressor").finish_non_exhaustive()
    }
}

impl HeaderCompressor {
    /// A fresh zlib stream (level 9 like Go's framer) primed with the SPDY/3 dictionary.
    pub fn new() -> Result<Self> {
        let mut z = Compress::new(Compression::best(), true);
        z.set_dictionary(HEADER_DICTIONARY)
            .map_err(|e| Error::Compress(e.to_string()))?;
        Ok(Self { z })
    }

    /// Deflates `headers` as one block ending in a SYNC_FLUSH, appended to `out`.
    pub fn compress(&mut self, headers: &[(String, String)], out: &mut Vec<u8>) -> Result<()> {
        let input = encode_block(headers)?;
        let start_in = self.z.total_in();
        loop {
            let consumed = usize::try_from(self.z.total_in() - start_in)
                .map_err(|e| Error::Compress(e.to_string()))?;
            out.reserve(input.len() - consumed + 64);
            self.z
                .compress_vec(&input[consumed..], out, FlushCompress::Sync)
                .map_err(|e| Error::Compress(e.to_string()))?;
            let consumed = usize::try_from(self.z.total_in() - start_in)
                .map_err(|e| Error::Compress(e.to_string()))?;
            // zlib: a flush is complete once it returns with output space left over.
            if consumed == input.len() && out.len() < out.capacity() {
                return Ok(());
            }
        }
    }
}

/// The receiving direction's zlib stream: inflates the peer's header blocks.
pub struct HeaderDecompressor {
    z: Decompress,
}

impl std::fmt::Debug for HeaderDecompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderDecompressor").finish_non_exhaustive()
    }
}

impl Default for HeaderDecompressor {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderDecompressor {
    /// A fresh zlib stream; the dictionary is supplied when the stream asks for it.
    pub fn new() -> Self {
        Self {
            z: Decompress::new(true),
        }
    }

    /// Inflates one compressed header block (exactly the bytes of one frame) and parses it.
    pub fn decompress(&mut self, input: &[u8]) -> Result<HeaderList> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        let mut pos = 0usize;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(out.len().max(1024));
            }
            let in_before = self.z.total_in();
            let out_before = out.len();
            let res = self
                .z
                .decompress_vec(&input[pos..], &mut out, FlushDecompress::Sync);
            let used = usize::try_from(self.z.total_in() - in_before)
                .map_err(|e| Error::Decompress(e.to_string()))?;
            pos += used;
            if out.len() > MAX_HEADER_BLOCK {
                return Err(Error::HeaderBlockTooLarge {
                    limit: MAX_HEADER_BLOCK,
                });
            }
            match res {
                Ok(Status::StreamEnd) => {
                    return Err(Error::Decompress(
                        "peer ended its header zlib stream".into(),
                    ))
                }
                Ok(_) => {
                    if pos == input.len() && out.len() < out.capacity() {
                        break;
                    }
                    if used == 0 && out.len() == out_before && pos == input.len() {
                        break;
                    }
                }
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(HEADER_DICTIONARY)
                        .map_err(|e| Error::Decompress(e.to_string()))?;
                }
                Err(e) => return Err(Error::Decompress(e.to_string())),
            }
        }
        decode_block(&out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> HeaderList {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn block_bytes_match_hand_computed() {
        let block = encode_block(&h(&[("StreamType", "error"), ("port", "80")])).unwrap();
        let mut want = vec![0, 0, 0, 2];
        want.extend_from_slice(&[0, 0, 0, 10]);
        want.extend_from_slice(b"streamtype");
        want.extend_from_slice(&[0, 0, 0, 5]);
        want.extend_from_slice(b"error");
        want.extend_from_slice(&[0, 0, 0, 4]);
        want.extend_from_slice(b"port");
        want.extend_from_slice(&[0, 0, 0, 2]);
        want.extend_from_slice(b"80");
        assert_eq!(block, want);
        assert_eq!(
            decode_block(&want).unwrap(),
            h(&[("streamtype", "error"), ("port", "80")])
        );
    }

    #[test]
    fn repeated_names_are_nul_joined_and_split_back() {
        let block = encode_block(&h(&[("a", "1"), ("b", "x"), ("A", "2")])).unwrap();
        let mut want = vec![0, 0, 0, 2, 0, 0, 0, 1, b'a', 0, 0, 0, 3, b'1', 0, b'2'];
        want.extend_from_slice(&[0, 0, 0, 1, b'b', 0, 0, 0, 1, b'x']);
        assert_eq!(block, want);
        assert_eq!(
            decode_block(&block).unwrap(),
            h(&[("a", "1"), ("a", "2"), ("b", "x")])
        );
    }

    #[test]
    fn truncated_or_lying_blocks_are_errors() {
        let block = encode_block(&h(&[("streamtype", "stdout")])).unwrap();
        for cut in 0..block.len() {
            assert!(decode_block(&block[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_block(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_block(&[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn compressed_block_round_trips_with_dictionary() {
        let mut c = HeaderCompressor::new().unwrap();
        let mut d = HeaderDecompressor::new();
        let first = h(&[("streamtype", "stdin"), ("requestid", "0")]);
        let mut wire = Vec::new();
        c.compress(&first, &mut wire).unwrap();
        // zlib header with FDICT set, then the Adler-32 of the SPDY/3 dictionary.
        assert_eq!(wire[0], 0x78);
        assert_eq!(wire[1] & 0x20, 0x20, "FDICT flag");
        assert_eq!(((wire[0] as u16) << 8 | wire[1] as u16) % 31, 0);
        assert_eq!(&wire[2..6], &[0xe3, 0xc6, 0xa7, 0xc2]);
        // SYNC_FLUSH marker ends every block.
        assert!(wire.ends_with(&[0, 0, 0xff, 0xff]));
        assert_eq!(d.decompress(&wire).unwrap(), first);
        // Later blocks continue the same zlib streams.
        for i in 0..50 {
            let next = h(&[
                ("streamtype", "data"),
                ("port", "8080"),
                ("requestid", &i.to_string()),
            ]);
            let mut wire = Vec::new();
            c.compress(&next, &mut wire).unwrap();
            assert_eq!(d.decompress(&wire).unwrap(), next);
        }
        // An empty header list (SYN_REPLY from spdystream) too.
        let mut wire = Vec::new();
        c.compress(&[], &mut wire).unwrap();
        assert_eq!(d.decompress(&wire).unwrap(), HeaderList::new());
    }

    #[test]
    fn garbage_compressed_input_is_an_error_not_a_panic() {
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(&[1, 2, 3, 4, 5, 6, 7, 8]).is_err());
        let mut d = HeaderDecompressor::new();
        assert!(d.decompress(&[]).is_err());
        let mut c = HeaderCompressor::new().unwrap();
        let mut wire = Vec::new();
        c.compress(&h(&[("a", "b")]), &mut wire).unwrap();
        for cut in 0..wire.len() {
            // Never a panic; with only the zlib header left nothing decodes.
            let mut d = HeaderDecompressor::new();
            let res = d.decompress(&wire[..cut]);
            if cut <= 6 {
                assert!(res.is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn zlib_bomb_is_refused() {
        let big = "x".repeat(MAX_HEADER_BLOCK + 10);
        let mut c = HeaderCompressor::new().unwrap();
        let mut wire = Vec::new();
        c.compress(&h(&[("a", &big)]), &mut wire).unwrap();
        assert!(wire.len() < 64 * 1024);
        let mut d = HeaderDecompressor::new();
        assert!(matches!(
            d.decompress(&wire),
            Err(Error::HeaderBlockTooLarge { .. })
        ));
    }
}
