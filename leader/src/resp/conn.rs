//! One RESP connection: read, decode every complete command, run them as a pipeline, write
//! the replies in one go.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::types::{BytesFrame, Resp2Frame as _};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use super::RespSettings;
use super::commands::{Seen, Step};
use super::reply::Reply;
use crate::NodeHandle;

/// How much more the read buffer is grown by before each read.
const READ_CHUNK: usize = 16 * 1024;

/// Tells a client over the connection bound so and closes the connection.
pub(super) async fn refuse(mut stream: TcpStream, max: usize) {
    let line = format!(
        "-ERR max number of clients reached ({max}); close idle connections or raise it\r\n"
    );
    let _ = stream.write_all(line.as_bytes()).await;
}

/// The state of one client connection.
pub(super) struct Connection {
    pub(super) id: u64,
    pub(super) node: NodeHandle,
    pub(super) settings: Arc<RespSettings>,
    /// Whether the client switched to RESP3 with `HELLO 3`.
    pub(super) resp3: bool,
    /// The selected database (an index into [`RespSettings::databases`]).
    pub(super) db: usize,
    /// Whether the client gave the password (always, when none is configured).
    pub(super) authed: bool,
    /// `CLIENT SETNAME`.
    pub(super) name: Option<String>,
    /// `SCAN` cursors, shared by the region's connections (a cursor works on any of them).
    pub(super) cursors: Arc<std::sync::Mutex<super::commands::Cursors>>,
    /// The connection's last write and session token.
    pub(super) seen: Seen,
    /// `MERIDIAN.READ`: how many regions this connection's reads consult; `None` uses the
    /// table's `[read]` default.
    pub(super) read_level: Option<leader_core::ReadLevel>,
}

impl Connection {
    pub(super) fn new(
        id: u64,
        node: NodeHandle,
        settings: Arc<RespSettings>,
        cursors: Arc<std::sync::Mutex<super::commands::Cursors>>,
    ) -> Self {
        let authed = settings.token.is_none();
        Connection {
            id,
            node,
            settings,
            resp3: false,
            db: 0,
            authed,
            name: None,
            cursors,
            seen: Seen::default(),
            read_level: None,
        }
    }

    /// Serves the connection until the client leaves, sends `QUIT`, breaks the protocol, or
    /// the region shuts down.
    pub(super) async fn run(mut self, mut stream: TcpStream, mut shutdown: watch::Receiver<bool>) {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut out = BytesMut::new();
        loop {
            let mut commands = Vec::new();
            let mut broken = None;
            while !buf.is_empty() {
                match next_command(&mut buf) {
                    Ok(Some(args)) if args.is_empty() => {}
                    Ok(Some(args)) => commands.push(args),
                    Ok(None) => break,
                    Err(why) => {
                        broken = Some(why);
                        break;
                    }
                }
            }
            let mut quit = false;
            if !commands.is_empty() {
                quit = self.pipeline(commands, &mut out).await;
            }
            if broken.is_none() && buf.len() > self.settings.max_request_bytes {
                broken = Some(format!(
                    "a request is larger than {} bytes (max_request_body_bytes)",
                    self.settings.max_request_bytes
                ));
            }
            if let Some(why) = &broken {
                // As Redis does: a protocol error is answered, then the connection is closed,
                // since what follows in the stream can no longer be framed.
                Reply::err(format!("Protocol error: {why}")).encode(self.resp3, &mut out);
            }
            if !out.is_empty() {
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                out.clear();
            }
            if quit || broken.is_some() {
                debug!(id = self.id, "RESP connection closed: {broken:?}");
                return;
            }
            buf.reserve(READ_CHUNK);
            let read = tokio::select! {
                read = stream.read_buf(&mut buf) => read,
                _ = shutdown.wait_for(|stop| *stop) => return,
            };
            match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Runs a pipeline of commands in order, appending their replies to `out`; returns whether
    /// the client asked to quit. Writes are submitted without waiting; anything else waits
    /// for the writes before it first (see the module docs).
    async fn pipeline(&mut self, commands: Vec<Vec<Bytes>>, out: &mut BytesMut) -> bool {
        let mut queued: Vec<Step> = Vec::new();
        for args in commands {
            if !super::commands::only_submits(&args[0]) {
                self.answer(&mut queued, out).await;
            }
            let step = self.execute(args).await;
            let quit = matches!(step, Step::Quit(_));
            queued.push(step);
            if quit {
                self.answer(&mut queued, out).await;
                return true;
            }
        }
        self.answer(&mut queued, out).await;
        false
    }

    /// Waits for the queued steps' answers and appends them, in order, to `out`.
    async fn answer(&mut self, queued: &mut Vec<Step>, out: &mut BytesMut) {
        for step in queued.drain(..) {
            step.finish(&mut self.seen).await.encode(self.resp3, out);
        }
    }
}

/// Takes the next complete command off the front of `buf`: its arguments, `None` when more
/// bytes are needed, or why the bytes are not a command.
fn next_command(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, String> {
    if buf.first() != Some(&b'*') {
        return Ok(inline_command(buf));
    }
    let Some((frame, _, _)) =
        redis_protocol::resp2::decode::decode_bytes_mut(buf).map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let BytesFrame::Array(items) = frame else {
        return Err("expected an array of bulk strings".into());
    };
    items
        .into_iter()
        .map(|item| match item {
            BytesFrame::BulkString(b) | BytesFrame::SimpleString(b) => Ok(b),
            other => Err(format!(
                "expected bulk strings in a command, found {:?}",
                other.kind()
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

/// An inline command (`PING\r\n`, as typed into telnet): words separated by spaces, up to the
/// end of the line. Redis accepts these too; every client library sends arrays.
fn inline_command(buf: &mut BytesMut) -> Option<Vec<Bytes>> {
    let end = buf.iter().position(|b| *b == b'\n')?;
    let line = buf.split_to(end + 1).freeze();
    let line = line.strip_suffix(b"\n").unwrap_or(&line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Some(
        line.split(|b| b.is_ascii_whitespace())
            .filter(|w| !w.is_empty())
            .map(Bytes::copy_from_slice)
            .collect(),
    )
}
