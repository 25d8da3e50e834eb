//! Property tests of the framing codec: hostile input yields errors, never panics, and an
//! oversized length prefix is refused before any payload is read or allocated.

use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::prelude::*;
use tokio::io::{AsyncRead, ReadBuf};
use transport::codec::{FrameDecoder, FrameError, FrameReader, encode_frame};

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
enum Msg {
    Ping(u64),
    Text(String),
    Batch(Vec<(u32, Vec<u8>)>),
    Nested(Option<Box<Msg>>),
}

fn msg() -> impl Strategy<Value = Msg> {
    let leaf = prop_oneof![
        any::<u64>().prop_map(Msg::Ping),
        ".{0,40}".prop_map(Msg::Text),
        prop::collection::vec(
            (any::<u32>(), prop::collection::vec(any::<u8>(), 0..50)),
            0..8
        )
        .prop_map(Msg::Batch),
    ];
    leaf.prop_recursive(3, 16, 2, |inner| {
        prop::option::of(inner.prop_map(Box::new)).prop_map(Msg::Nested)
    })
}

/// Feeds `bytes` to a decoder in chunks of the given sizes; returns the messages decoded and
/// the first error, if any.
fn decode_chunked(bytes: &[u8], chunks: &[usize], max: usize) -> (Vec<Msg>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new(max);
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (mut piece, tail) = rest.split_at(n);
        rest = tail;
        loop {
            match decoder.decode::<Msg>(&mut piece) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, decoder.finish().err())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
        chunks in prop::collection::vec(1usize..64, 1..8),
        max in 0usize..4096,
    ) {
        let _ = decode_chunked(&bytes, &chunks, max);
    }

    #[test]
    fn frames_round_trip_across_any_chunking(
        msgs in prop::collection::vec(msg(), 0..10),
        chunks in prop::collection::vec(1usize..100, 1..8),
    ) {
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend_from_slice(&encode_frame(m, 1 << 20).expect("encodes"));
        }
        let (out, err) = decode_chunked(&wire, &chunks, 1 << 20);
        prop_assert!(err.is_none(), "{err:?}");
        prop_assert_eq!(out, msgs);
    }

    #[test]
    fn truncated_frames_are_reported(m in msg(), cut in any::<prop::sample::Index>()) {
        let frame = encode_frame(&m, 1 << 20).expect("encodes");
        let cut = cut.index(frame.len()); // 0..len: always short of the whole frame
        let (out, err) = decode_chunked(&frame[..cut], &[7], 1 << 20);
        prop_assert!(out.is_empty());
        if cut == 0 {
            prop_assert!(err.is_none());
        } else {
            prop_assert!(matches!(err, Some(FrameError::Truncated { .. })), "{err:?}");
        }
    }

    #[test]
    fn corrupted_payloads_error_or_decode_but_never_panic(
        m in msg(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut frame = encode_frame(&m, 1 << 20).expect("encodes").to_vec();
        for (at, byte) in flips {
            let i = 4 + at.index(frame.len() - 4).min(frame.len().saturating_sub(5));
            if i < frame.len() {
                frame[i] ^= byte;
            }
        }
        let _ = decode_chunked(&frame, &[3, 1000], 1 << 20);
    }

    #[test]
    fn oversized_prefix_is_refused_before_the_payload(
        max in 0usize..1_000_000,
        excess in 1u64..=u64::from(u32::MAX),
        trailing in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let len = (max as u64 + excess).min(u64::from(u32::MAX));
        prop_assume!(len > max as u64);
        let mut wire = (len as u32).to_be_bytes().to_vec();
        wire.extend_from_slice(&trailing);
        let mut input = &wire[..];
        let err = FrameDecoder::new(max).decode::<Msg>(&mut input).unwrap_err();
        let refused = matches!(err, FrameError::TooLarge { len: l, max: m } if l == len && m == max);
        prop_assert!(refused, "{err}");
        // Only the four prefix bytes were consumed.
        prop_assert_eq!(input.len(), trailing.len());
    }

    #[test]
    fn encoder_refuses_what_the_decoder_would(m in msg(), max in 0usize..200) {
        match encode_frame(&m, max) {
            Ok(frame) => prop_assert!(frame.len() - 4 <= max),
            Err(FrameError::TooLarge { len, .. }) => prop_assert!(len > max as u64),
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }
}

/// A reader that yields `prefix` once and panics if read again: proof that the reader
/// stops at the length prefix.
struct PrefixThenPanic {
    prefix: Option<[u8; 4]>,
}

impl AsyncRead for PrefixThenPanic {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let prefix = self
            .prefix
            .take()
            .expect("the reader read past an oversized length prefix");
        buf.put_slice(&prefix);
        Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn four_gib_prefix_is_refused_without_reading_further() {
    let mut reader = FrameReader::new(
        PrefixThenPanic {
            prefix: Some(u32::MAX.to_be_bytes()),
        },
        8 * 1024 * 1024,
    );
    let err = reader.next::<Msg>().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "frame of 4294967295 bytes exceeds the limit of 8388608 bytes"
    );
    assert_eq!(reader.bytes_read(), 4);
}

#[tokio::test]
async fn async_reader_reports_truncation_and_clean_end() {
    let frame = encode_frame(&Msg::Text("hello".into()), 100).expect("encodes");
    let mut clean = FrameReader::new(&frame[..], 100);
    assert_eq!(
        clean.next::<Msg>().await.unwrap(),
        Some(Msg::Text("hello".into()))
    );
    assert_eq!(clean.next::<Msg>().await.unwrap(), None);
    let mut cut = FrameReader::new(&frame[..frame.len() - 1], 100);
    let err = cut.next::<Msg>().await.unwrap_err();
    assert!(
        err.to_string()
            .starts_with("stream ended in the middle of a frame"),
        "{err}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn async_reader_never_panics_on_random_streams(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        max in 0usize..2048,
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        rt.block_on(async {
            let mut reader = FrameReader::new(&bytes[..], max);
            // Each iteration consumes at least one byte or ends, so this terminates.
            for _ in 0..=bytes.len() {
                match reader.next::<Msg>().await {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        });
    }
}
