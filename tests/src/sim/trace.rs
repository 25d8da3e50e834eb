//! The event trace of a run: a running SHA-256 over every event handed to a machine and every
//! effect it returned (the determinism self-check compares two runs' hashes), and, when asked
//! for, a readable log whose tail is printed when a replayed seed fails.

use std::collections::VecDeque;

use leader_core::{Effect, Event, PeerMsg};
use sha2::{Digest, Sha256};

/// Lines of readable trace kept for a failure report.
const TAIL_LINES: usize = 400;

/// Hash and (optionally) readable log of a run.
pub struct Trace {
    hash: Sha256,
    buf: Vec<u8>,
    /// The readable tail, when verbose.
    tail: Option<VecDeque<String>>,
    /// Print every line as it happens (`MERIDIAN_SIM_TRACE=all`).
    echo: bool,
}

impl Trace {
    /// A trace; `verbose` keeps a readable tail, `echo` also prints every line.
    pub fn new(verbose: bool, echo: bool) -> Self {
        Trace {
            hash: Sha256::new(),
            buf: Vec::with_capacity(4096),
            tail: verbose.then(VecDeque::new),
            echo,
        }
    }

    /// Whether readable lines are wanted (callers skip formatting otherwise).
    pub fn verbose(&self) -> bool {
        self.tail.is_some()
    }

    /// Adds a readable line (only call when [`Trace::verbose`]).
    pub fn line(&mut self, line: String) {
        if self.echo {
            println!("{line}");
        }
        if let Some(tail) = &mut self.tail {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
    }

    /// The readable tail, oldest first.
    pub fn tail(&self) -> Vec<String> {
        self.tail.iter().flatten().cloned().collect()
    }

    fn word(&mut self, w: u64) {
        self.buf.extend_from_slice(&w.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.word(b.len() as u64);
        self.buf.extend_from_slice(b);
    }

    fn msg(&mut self, m: &PeerMsg) {
        // Invariant: protocol messages are plain data and always serialise.
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; 8]);
        let mut out = std::mem::take(&mut self.buf);
        out = postcard::to_extend(m, out).expect("peer messages serialise");
        let len = (out.len() - start - 8) as u64;
        out[start..start + 8].copy_from_slice(&len.to_le_bytes());
        self.buf = out;
    }

    /// Records an event handed to region `r` at virtual time `now`.
    pub fn event(&mut self, now: u64, r: usize, ev: &Event) {
        self.word(now);
        self.word(r as u64);
        match ev {
            Event::ClientWrite {
                id,
                key,
                durability,
                ..
            } => {
                self.word(1);
                self.word(*id);
                self.bytes(key);
                self.word(*durability as u64);
            }
            Event::ClientAdd { id, key, by, .. } => {
                self.word(9);
                self.word(*id);
                self.bytes(key);
                self.word(by.cast_unsigned());
            }
            Event::ClientWait { id, seq, .. } => {
                self.word(10);
                self.word(*id);
                self.word(seq.0);
            }
            Event::CancelWait { id } => {
                self.word(18);
                self.word(*id);
            }
            Event::ClientRead { id, key, level, .. } => {
                self.word(21);
                self.word(*id);
                self.bytes(key);
                self.word(*level as u64);
            }
            Event::PeerUp { peer, conn } => {
                self.word(2);
                self.bytes(peer.as_bytes());
                self.word(*conn);
            }
            Event::PeerDown { peer, conn } => {
                self.word(3);
                self.bytes(peer.as_bytes());
                self.word(*conn);
            }
            Event::Frame { peer, conn, msg } => {
                self.word(4);
                self.bytes(peer.as_bytes());
                self.word(*conn);
                self.msg(msg);
            }
            Event::SendFailed { peer, conn } => {
                self.word(5);
                self.bytes(peer.as_bytes());
                self.word(*conn);
            }
            Event::Persisted { id } => {
                self.word(6);
                self.word(*id);
            }
            Event::LogRead {
                conn,
                origin,
                entries,
                ..
            } => {
                self.word(7);
                self.word(*conn);
                self.bytes(origin.0.as_bytes());
                self.word(entries.len() as u64);
            }
            Event::SnapshotRead {
                conn,
                request,
                result,
                ..
            } => {
                self.word(19);
                self.word(*conn);
                self.msg(&PeerMsg::SnapshotRequest(request.clone()));
                match result {
                    Ok(piece) => {
                        self.bytes(&piece.applied.to_bytes());
                        self.word(piece.states.len() as u64);
                    }
                    Err(e) => self.bytes(e.as_bytes()),
                }
            }
            Event::Tick => self.word(8),
            Event::AntiEntropy => self.word(21),
        }
        self.flush();
    }

    /// Records an effect returned by region `r`.
    pub fn effect(&mut self, r: usize, e: &Effect) {
        self.word(r as u64);
        match e {
            Effect::Persist(b) => {
                self.word(11);
                self.word(b.id);
                self.bytes(&b.applied.to_bytes());
                self.word(b.log.len() as u64);
                for (_, key, state) in &b.keys {
                    self.bytes(key);
                    self.bytes(&state.digest());
                }
            }
            Effect::Send { peer, conn, msg } => {
                self.word(12);
                self.bytes(peer.as_bytes());
                self.word(*conn);
                self.msg(msg);
            }
            Effect::Close { conn, reason, .. } => {
                self.word(13);
                self.word(*conn);
                self.bytes(reason.as_bytes());
            }
            Effect::ReadLog { conn, from, to, .. } => {
                self.word(14);
                self.word(*conn);
                self.word(from.0);
                self.word(to.0);
            }
            Effect::ReadSnapshot {
                conn,
                request,
                max_bytes,
                ..
            } => {
                self.word(20);
                self.word(*conn);
                self.msg(&PeerMsg::SnapshotRequest(request.clone()));
                self.word(*max_bytes as u64);
            }
            Effect::Waited { id, regions } => {
                self.word(17);
                self.word(*id);
                self.word(regions.len() as u64);
            }
            Effect::Reply { id, result } => {
                self.word(15);
                self.word(*id);
                match result {
                    Ok(r) => {
                        self.word(r.dot.seq.0);
                        self.word(r.hlc.as_u64());
                        self.word(u64::from(r.timed_out));
                        self.word(r.durable_in.len() as u64);
                    }
                    Err(e) => self.bytes(e.to_string().as_bytes()),
                }
            }
            Effect::ReadDone { id, result } => {
                self.word(22);
                self.word(*id);
                match result {
                    Ok(a) => {
                        self.bytes(&a.state.digest());
                        self.word(a.answered.len() as u64);
                    }
                    Err(e) => self.bytes(e.to_string().as_bytes()),
                }
            }
            Effect::Alarm(a) => {
                self.word(16);
                self.bytes(format!("{a:?}").as_bytes());
            }
        }
        self.flush();
    }

    /// Records a simulator decision that changes what happens next (a fault, a crash...).
    pub fn note(&mut self, now: u64, what: &str) {
        self.word(now);
        self.bytes(what.as_bytes());
        self.flush();
    }

    fn flush(&mut self) {
        self.hash.update(&self.buf);
        self.buf.clear();
    }

    /// The hash of everything recorded.
    pub fn finish(self) -> [u8; 32] {
        self.hash.finalize().into()
    }
}

/// One line describing a peer message, for the readable trace.
pub fn describe(m: &PeerMsg) -> String {
    match m {
        PeerMsg::Hello(h) => format!("Hello({} {} applied {:?})", h.region, h.replica, h.applied),
        PeerMsg::Batch(b) => match (b.entries.first(), b.entries.last()) {
            (Some(f), Some(l)) => format!(
                "Batch({} {}..={}, {} entries)",
                b.origin_region,
                f.seq(),
                l.seq(),
                b.entries.len()
            ),
            _ => format!("Batch({} empty)", b.origin_region),
        },
        PeerMsg::Ack(a) => format!("Ack({:?})", a.applied),
        PeerMsg::Heartbeat(h) => format!("Heartbeat(wall {} hlc {:?})", h.wall_ms, h.hlc),
        PeerMsg::Resync(r) => format!("Resync({} after {})", r.origin, r.applied),
        PeerMsg::Refuse(r) => format!("Refuse({})", r.reason),
        PeerMsg::NeedsSnapshot(n) => format!(
            "NeedsSnapshot({} from {}, log starts at {})",
            n.origin_region, n.from, n.log_start
        ),
        PeerMsg::SnapshotRequest(r) => format!(
            "SnapshotRequest(after {}, {} bytes, low {:?})",
            show_cursor(r.after.as_ref()),
            r.max_bytes,
            r.low
        ),
        PeerMsg::SnapshotChunk(c) => format!(
            "SnapshotChunk(after {}, {} states, applied {:?}{}{})",
            show_cursor(c.after.as_ref()),
            c.states.len(),
            c.applied,
            if c.done { ", done" } else { "" },
            if c.restart { ", restart" } else { "" }
        ),
        PeerMsg::SnapshotUnavailable(u) => format!("SnapshotUnavailable({})", u.reason),
        PeerMsg::ReadRequest(r) => format!(
            "ReadRequest(#{} {}/{})",
            r.id,
            r.table,
            String::from_utf8_lossy(&r.key)
        ),
        PeerMsg::ReadReply(r) => format!(
            "ReadReply(#{} {:?}{})",
            r.id,
            r.state.as_ref().map(|s| &s.context),
            r.refused
                .as_ref()
                .map_or(String::new(), |why| format!(", refused: {why}"))
        ),
        PeerMsg::ReadRepair(r) => format!(
            "ReadRepair({}/{} {:?})",
            r.table,
            String::from_utf8_lossy(&r.key),
            r.state.context
        ),
        PeerMsg::AaeRequest(r) => format!(
            "AaeRequest(#{} level {}, {} nodes)",
            r.round,
            r.level,
            r.nodes.len()
        ),
        PeerMsg::AaeHashes(h) => format!("AaeHashes(#{}, {} hashes)", h.round, h.hashes.len()),
        PeerMsg::AaeStatesRequest(r) => {
            format!("AaeStatesRequest(#{}, {} leaves)", r.round, r.leaves.len())
        }
        PeerMsg::AaeStates(s) => format!(
            "AaeStates(#{}, {} leaves, {} states)",
            s.round,
            s.leaves.len(),
            s.states.len()
        ),
        PeerMsg::AaeRepair(r) => format!("AaeRepair(#{}, {} states)", r.round, r.states.len()),
    }
}

/// A snapshot cursor for the readable trace.
fn show_cursor(c: Option<&(String, Vec<u8>)>) -> String {
    c.map_or_else(
        || "the start".to_owned(),
        |(t, k)| format!("{t}/{}", String::from_utf8_lossy(k)),
    )
}
