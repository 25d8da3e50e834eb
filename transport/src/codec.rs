//! Framing: length-prefixed postcard frames, and the stream preamble and hello that open
//! every connection. Pure functions and a sans-IO decoder, plus a thin async reader.
//!
//! # Wire layout of one direction of a connection (one QUIC unidirectional stream)
//!
//! ```text
//! preamble  "MRDN" (4 bytes) | transport version (u16, big endian)
//! frame     length (u32, big endian) | postcard(Hello)            length <= HELLO_MAX_BYTES
//! frame     length (u32, big endian) | postcard(M)                length <= max_frame_bytes
//! frame     ...
//! ```
//!
//! The preamble is raw bytes, not postcard, so that any future version can still read the
//! version number of a peer and say clearly that it does not speak it. The length of a frame
//! is checked against the limit as soon as its four bytes are known, before any memory is
//! reserved for the payload, and the payload buffer then grows only as bytes really arrive:
//! a peer that announces 4 GiB is refused at once, and one that announces the maximum and
//! stalls holds at most that much.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt as _};

/// The first four bytes of every Meridian stream.
pub const MAGIC: [u8; 4] = *b"MRDN";

/// The transport protocol version this build speaks. Peers must speak exactly this version.
///
/// It covers the preamble, the framing and [`Hello`]; the messages carried in frames are
/// versioned by the application above.
pub const TRANSPORT_VERSION: u16 = 2;

/// Length of the preamble: magic and version.
pub const PREAMBLE_BYTES: usize = 6;

/// Length of a frame's length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Largest hello frame accepted: a hello holds two short names and a number.
pub const HELLO_MAX_BYTES: usize = 1024;

/// Default largest application frame (8 MiB): large enough for a generous replication batch,
/// small enough that one connection cannot pin much memory.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// The largest `max_frame_bytes` a mesh accepts (256 MiB). Limits beyond this are almost
/// certainly a configuration mistake.
pub const MAX_FRAME_BYTES_LIMIT: usize = 256 * 1024 * 1024;

/// Why a frame could not be encoded or decoded. Every variant ends the stream it came from.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the limit; nothing was allocated for it.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced (or, when encoding, actual) payload length.
        len: u64,
        /// The limit in force.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended in the middle of a frame ({got} of {expected} bytes received)")]
    Truncated {
        /// Bytes of the frame (header included) that arrived.
        got: usize,
        /// Bytes the frame should have had (header included; 4 if the header was cut).
        expected: usize,
    },
    /// The payload is not a valid postcard encoding of the expected type.
    #[error("malformed frame payload: {0}")]
    Malformed(postcard::Error),
    /// The payload decoded, but bytes were left over: a sender bug or a type mismatch.
    #[error("malformed frame payload: {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The message could not be serialised.
    #[error("could not encode message: {0}")]
    Encode(postcard::Error),
    /// The stream does not start with the Meridian magic: the peer is not a Meridian
    /// transport.
    #[error(
        "stream does not start with the Meridian magic (got {0:02x?}); the peer is not a Meridian region"
    )]
    BadMagic([u8; 4]),
    /// Reading the stream failed.
    #[error("stream read failed: {0}")]
    Io(#[from] std::io::Error),
}

/// The transport-level hello each side sends first on its stream, after the preamble.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// The sender's cluster name.
    pub cluster: String,
    /// The region the sender claims to be (must match its certificate).
    pub region: String,
    /// A random number drawn once per mesh start. Two connections from the same incarnation
    /// are a simultaneous dial; a new incarnation means the peer restarted.
    pub incarnation: u64,
    /// What the application calls this process ([`MeshConfig::instance`]; Meridian: its
    /// replica id), so that a split-brain report can name both processes. Added in
    /// transport version 2.
    ///
    /// [`MeshConfig::instance`]: crate::MeshConfig::instance
    pub instance: String,
}

/// The preamble that opens every stream.
pub fn encode_preamble() -> [u8; PREAMBLE_BYTES] {
    let v = TRANSPORT_VERSION.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1]]
}

/// Checks the magic of a preamble and returns the version it announces.
pub fn decode_preamble(bytes: [u8; PREAMBLE_BYTES]) -> Result<u16, FrameError> {
    let magic = [bytes[0], bytes[1], bytes[2], bytes[3]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    Ok(u16::from_be_bytes([bytes[4], bytes[5]]))
}

/// Encodes `msg` as one frame (length prefix and postcard payload).
///
/// Fails with [`FrameError::TooLarge`] if the payload exceeds `max_frame_bytes`, so a sender
/// finds out at once instead of the receiver closing the connection.
pub fn encode_frame<M: Serialize + ?Sized>(
    msg: &M,
    max_frame_bytes: usize,
) -> Result<Bytes, FrameError> {
    let buf =
        postcard::to_extend(msg, vec![0u8; FRAME_HEADER_BYTES]).map_err(FrameError::Encode)?;
    let len = buf.len() - FRAME_HEADER_BYTES;
    let Some(prefix) = u32::try_from(len).ok().filter(|_| len <= max_frame_bytes) else {
        return Err(FrameError::TooLarge {
            len: len as u64,
            max: max_frame_bytes,
        });
    };
    let mut buf = buf;
    buf[..FRAME_HEADER_BYTES].copy_from_slice(&prefix.to_be_bytes());
    Ok(Bytes::from(buf))
}

/// Decodes one postcard payload into `M`, refusing trailing bytes.
pub fn decode_payload<M: DeserializeOwned>(payload: &[u8]) -> Result<M, FrameError> {
    let (msg, rest) = postcard::take_from_bytes(payload).map_err(FrameError::Malformed)?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// A sans-IO frame decoder: feed it byte slices as they arrive, take out whole frames.
///
/// It consumes input only up to the end of the current frame, so it never buffers more than
/// one frame: memory is bounded by `max_frame_bytes` (times two for `Vec` growth). After it
/// returns an error the stream is broken; drop the decoder with the stream.
#[derive(Debug)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    header: [u8; FRAME_HEADER_BYTES],
    header_len: usize,
    /// The announced payload length and the bytes of it received so far.
    payload: Option<(usize, Vec<u8>)>,
}

impl FrameDecoder {
    /// A decoder that refuses frames longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            max_frame_bytes,
            header: [0; FRAME_HEADER_BYTES],
            header_len: 0,
            payload: None,
        }
    }

    /// Changes the limit for frames whose header has not been read yet.
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }

    /// Consumes bytes from the front of `input` until a frame is complete and returns its
    /// payload, or `None` when `input` ran out first (feed more and call again).
    pub fn decode_frame(&mut self, input: &mut &[u8]) -> Result<Option<Vec<u8>>, FrameError> {
        let (len, buf) = match &mut self.payload {
            Some(payload) => payload,
            None => {
                let take = (FRAME_HEADER_BYTES - self.header_len).min(input.len());
                self.header[self.header_len..self.header_len + take]
                    .copy_from_slice(&input[..take]);
                self.header_len += take;
                *input = &input[take..];
                if self.header_len < FRAME_HEADER_BYTES {
                    return Ok(None);
                }
                let len = u32::from_be_bytes(self.header);
                // The limit is checked here, before a single byte of payload is reserved.
                if u64::from(len) > self.max_frame_bytes as u64 {
                    return Err(FrameError::TooLarge {
                        len: u64::from(len),
                        max: self.max_frame_bytes,
                    });
                }
                self.payload.insert((len as usize, Vec::new()))
            }
        };
        let take = (*len - buf.len()).min(input.len());
        buf.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if buf.len() < *len {
            return Ok(None);
        }
        self.header_len = 0;
        Ok(self.payload.take().map(|(_, buf)| buf))
    }

    /// Like [`decode_frame`](Self::decode_frame), then decodes the payload into `M`.
    pub fn decode<M: DeserializeOwned>(
        &mut self,
        input: &mut &[u8],
    ) -> Result<Option<M>, FrameError> {
        match self.decode_frame(input)? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    }

    /// Call when the input has ended: an error if a frame was cut off in the middle.
    pub fn finish(&self) -> Result<(), FrameError> {
        match &self.payload {
            Some((len, buf)) => Err(FrameError::Truncated {
                got: FRAME_HEADER_BYTES + buf.len(),
                expected: FRAME_HEADER_BYTES + len,
            }),
            None if self.header_len > 0 => Err(FrameError::Truncated {
                got: self.header_len,
                expected: FRAME_HEADER_BYTES,
            }),
            None => Ok(()),
        }
    }
}

/// Size of the read buffer of a [`FrameReader`].
const READ_CHUNK_BYTES: usize = 16 * 1024;

/// Reads frames from an async byte stream (a QUIC receive stream in the mesh) through a
/// [`FrameDecoder`], so the async and the slice paths share one parser.
#[derive(Debug)]
pub struct FrameReader<R> {
    reader: R,
    decoder: FrameDecoder,
    buf: Box<[u8]>,
    pos: usize,
    end: usize,
    /// Bytes consumed from the stream so far, for link counters.
    bytes_read: u64,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader that refuses frames longer than `max_frame_bytes`.
    pub fn new(reader: R, max_frame_bytes: usize) -> Self {
        FrameReader {
            reader,
            decoder: FrameDecoder::new(max_frame_bytes),
            buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            pos: 0,
            end: 0,
            bytes_read: 0,
        }
    }

    /// Changes the frame limit (the hello has a small one; application frames a larger one).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.decoder.set_max_frame_bytes(max_frame_bytes);
    }

    /// Total bytes read from the underlying stream.
    pub fn bytes_read(&self) -> u64 {
        self.bytes_read
    }

    /// Reads the preamble and returns the peer's transport version.
    pub async fn read_preamble(&mut self) -> Result<u16, FrameError> {
        let mut preamble = [0u8; PREAMBLE_BYTES];
        let mut got = 0;
        while got < PREAMBLE_BYTES {
            if self.pos == self.end && !self.fill().await? {
                return Err(FrameError::Truncated {
                    got,
                    expected: PREAMBLE_BYTES,
                });
            }
            let take = (PREAMBLE_BYTES - got).min(self.end - self.pos);
            preamble[got..got + take].copy_from_slice(&self.buf[self.pos..self.pos + take]);
            self.pos += take;
            got += take;
        }
        decode_preamble(preamble)
    }

    /// The next frame's payload, or `None` if the stream ended cleanly between frames.
    pub async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        loop {
            if self.pos < self.end {
                let mut input = &self.buf[self.pos..self.end];
                let frame = self.decoder.decode_frame(&mut input)?;
                self.pos = self.end - input.len();
                if frame.is_some() {
                    return Ok(frame);
                }
            }
            if !self.fill().await? {
                return self.decoder.finish().map(|()| None);
            }
        }
    }

    /// The next frame decoded into `M`, or `None` if the stream ended cleanly between frames.
    pub async fn next<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        match self.next_frame().await? {
            Some(payload) => decode_payload(&payload).map(Some),
            None => Ok(None),
        }
    }

    /// Refills the (fully consumed) buffer; `false` at end of stream.
    async fn fill(&mut self) -> Result<bool, FrameError> {
        debug_assert_eq!(self.pos, self.end, "refill only an empty buffer");
        let n = self.reader.read(&mut self.buf).await?;
        self.pos = 0;
        self.end = n;
        self.bytes_read += n as u64;
        Ok(n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    enum Msg {
        Ping(u64),
        Data(Vec<u8>),
    }

    #[test]
    fn frame_layout_is_length_then_postcard() {
        let frame = encode_frame(&Msg::Ping(5), 100).unwrap();
        assert_eq!(&frame[..], &[0, 0, 0, 2, 0, 5]);
    }

    #[test]
    fn encode_refuses_oversized() {
        let err = encode_frame(&Msg::Data(vec![0; 100]), 50).unwrap_err();
        assert!(
            matches!(err, FrameError::TooLarge { len: 102, max: 50 }),
            "{err}"
        );
    }

    #[test]
    fn decodes_across_arbitrary_splits() {
        let mut wire = Vec::new();
        for i in 0..5 {
            wire.extend_from_slice(
                &encode_frame(&Msg::Data(vec![i; i as usize * 7]), 100).unwrap(),
            );
        }
        for chunk in 1..wire.len() {
            let mut dec = FrameDecoder::new(100);
            let mut out = Vec::new();
            for piece in wire.chunks(chunk) {
                let mut input = piece;
                while let Some(m) = dec.decode::<Msg>(&mut input).unwrap() {
                    out.push(m);
                }
                assert!(input.is_empty());
            }
            dec.finish().unwrap();
            assert_eq!(out.len(), 5, "chunk {chunk}");
            assert_eq!(out[3], Msg::Data(vec![3; 21]));
        }
    }

    #[test]
    fn decoder_stops_at_frame_end() {
        let mut wire = encode_frame(&Msg::Ping(1), 10).unwrap().to_vec();
        wire.extend_from_slice(&[9, 9]);
        let mut input = &wire[..];
        let mut dec = FrameDecoder::new(10);
        assert_eq!(dec.decode::<Msg>(&mut input).unwrap(), Some(Msg::Ping(1)));
        assert_eq!(input, &[9, 9]);
    }

    #[test]
    fn truncation_is_reported() {
        let wire = encode_frame(&Msg::Data(vec![1; 10]), 100).unwrap();
        let mut dec = FrameDecoder::new(100);
        let mut input = &wire[..7];
        assert!(dec.decode::<Msg>(&mut input).unwrap().is_none());
        let err = dec.finish().unwrap_err();
        assert!(
            matches!(
                err,
                FrameError::Truncated {
                    got: 7,
                    expected: 16
                }
            ),
            "{err}"
        );
        let mut dec = FrameDecoder::new(100);
        assert!(dec.decode::<Msg>(&mut &wire[..2]).unwrap().is_none());
        assert!(matches!(
            dec.finish(),
            Err(FrameError::Truncated {
                got: 2,
                expected: 4
            })
        ));
    }

    #[test]
    fn trailing_bytes_are_malformed() {
        let mut frame = vec![0, 0, 0, 3];
        frame.extend_from_slice(&[0, 5, 7]); // Ping(5) and a stray byte
        let err = FrameDecoder::new(10)
            .decode::<Msg>(&mut &frame[..])
            .unwrap_err();
        assert!(matches!(err, FrameError::TrailingBytes(1)), "{err}");
    }

    #[test]
    fn preamble_round_trip_and_bad_magic() {
        assert_eq!(
            decode_preamble(encode_preamble()).unwrap(),
            TRANSPORT_VERSION
        );
        let err = decode_preamble(*b"GET /\n").unwrap_err().to_string();
        assert!(err.contains("not a Meridian region"), "{err}");
    }
}
