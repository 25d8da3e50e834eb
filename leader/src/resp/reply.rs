//! Replies, and their encoding in the protocol version a connection speaks (RESP2 or RESP3),
//! through the `redis-protocol` crate's encoders.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::BytesFrame as Frame2;
use redis_protocol::resp3::types::BytesFrame as Frame3;

/// One reply, independent of the protocol version.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Reply {
    /// `+OK` and the like.
    Simple(&'static str),
    /// `-ERR ...`: the text starts with the error code (`ERR`, `NOAUTH`, `WRONGTYPE`...).
    Error(String),
    /// `:n`.
    Int(i64),
    /// A bulk (RESP3 blob) string.
    Bulk(Bytes),
    /// RESP2's null bulk string, RESP3's null.
    Null,
    /// An array.
    Array(Vec<Reply>),
    /// A map in RESP3; a flat array of key, value, key, value... in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub(crate) const OK: Reply = Reply::Simple("OK");

    /// An error reply with Redis's generic `ERR` code.
    pub(crate) fn err(message: impl std::fmt::Display) -> Reply {
        Reply::Error(format!("ERR {message}"))
    }

    /// A bulk string of text.
    pub(crate) fn text(s: impl Into<String>) -> Reply {
        Reply::Bulk(Bytes::from(s.into()))
    }

    /// Appends the reply to `out` in RESP2 (`resp3 == false`) or RESP3.
    pub(crate) fn encode(&self, resp3: bool, out: &mut BytesMut) {
        // Encoding a well-formed frame into a growable buffer cannot fail; an error here
        // would be a bug in the frame built below, so it becomes an error reply instead of a
        // panic or a silently missing reply (the client would then wait forever).
        let encoded = if resp3 {
            redis_protocol::resp3::encode::complete::extend_encode(out, &self.to_resp3(), false)
        } else {
            redis_protocol::resp2::encode::extend_encode(out, &self.to_resp2(), false)
        };
        if let Err(e) = encoded {
            out.extend_from_slice(
                format!("-ERR internal error encoding a reply: {e}\r\n").as_bytes(),
            );
        }
    }

    fn to_resp2(&self) -> Frame2 {
        match self {
            Reply::Simple(s) => Frame2::SimpleString(Bytes::from_static(s.as_bytes())),
            Reply::Error(e) => Frame2::Error(e.as_str().into()),
            Reply::Int(n) => Frame2::Integer(*n),
            Reply::Bulk(b) => Frame2::BulkString(b.clone()),
            Reply::Null => Frame2::Null,
            Reply::Array(items) => Frame2::Array(items.iter().map(Reply::to_resp2).collect()),
            Reply::Map(pairs) => Frame2::Array(
                pairs
                    .iter()
                    .flat_map(|(k, v)| [k.to_resp2(), v.to_resp2()])
                    .collect(),
            ),
        }
    }

    fn to_resp3(&self) -> Frame3 {
        match self {
            Reply::Simple(s) => Frame3::SimpleString {
                data: Bytes::from_static(s.as_bytes()),
                attributes: None,
            },
            Reply::Error(e) => Frame3::SimpleError {
                data: e.as_str().into(),
                attributes: None,
            },
            Reply::Int(n) => Frame3::Number {
                data: *n,
                attributes: None,
            },
            Reply::Bulk(b) => Frame3::BlobString {
                data: b.clone(),
                attributes: None,
            },
            Reply::Null => Frame3::Null,
            Reply::Array(items) => Frame3::Array {
                data: items.iter().map(Reply::to_resp3).collect(),
                attributes: None,
            },
            Reply::Map(pairs) => Frame3::Map {
                data: pairs
                    .iter()
                    .map(|(k, v)| (k.to_resp3(), v.to_resp3()))
                    .collect(),
                attributes: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(r: &Reply) -> (String, String) {
        let (mut two, mut three) = (BytesMut::new(), BytesMut::new());
        r.encode(false, &mut two);
        r.encode(true, &mut three);
        (
            String::from_utf8_lossy(&two).into_owned(),
            String::from_utf8_lossy(&three).into_owned(),
        )
    }

    #[test]
    fn each_reply_encodes_as_redis_does_in_both_versions() {
        assert_eq!(both(&Reply::OK), ("+OK\r\n".into(), "+OK\r\n".into()));
        assert_eq!(
            both(&Reply::err("no")),
            ("-ERR no\r\n".into(), "-ERR no\r\n".into())
        );
        assert_eq!(both(&Reply::Int(-3)), (":-3\r\n".into(), ":-3\r\n".into()));
        assert_eq!(
            both(&Reply::text("v")),
            ("$1\r\nv\r\n".into(), "$1\r\nv\r\n".into())
        );
        assert_eq!(both(&Reply::Null), ("$-1\r\n".into(), "_\r\n".into()));
        let map = Reply::Map(vec![(Reply::text("k"), Reply::Int(1))]);
        assert_eq!(
            both(&map),
            (
                "*2\r\n$1\r\nk\r\n:1\r\n".into(),
                "%1\r\n$1\r\nk\r\n:1\r\n".into()
            )
        );
    }
}
