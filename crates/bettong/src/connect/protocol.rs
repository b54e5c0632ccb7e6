//! The Wallaroo connector protocol (version 0.0.1), frame by frame: what a connector source
//! and a two-phase-commit connector sink exchange with the engine. Every layout here is
//! Wallaroo's (`connector_wire_messages.pony` and its Python mirror); see
//! `../shared/reference/connector-protocol.md`.
//!
//! A frame on the wire is `[u32 BE len][u8 tag][body]`, `len` counting the tag and the body,
//! so the engine's ordinary [`FrameReader`](crate::codec::FrameReader) splits a connection into
//! frames and [`Frame::decode`] reads one payload (tag and body). Integers are big-endian,
//! strings are `u16 BE len + bytes` (`Restart`'s address: `u32 len + bytes`).
//!
//! Nothing here trusts the peer: every length is checked against what is left of the frame,
//! and a malformed frame is an [`Err`] with what was wrong, never a panic.

use std::fmt;

/// The version a connector source must say in its `Hello`.
pub(crate) const SOURCE_VERSION: &str = "0.0.1";
/// The version the engine says to a two-phase-commit sink (Wallaroo writes it with a "v").
pub(crate) const SINK_VERSION: &str = "v0.0.1";
/// The cookie the engine gives a two-phase-commit sink (hard-coded in Wallaroo as well).
pub(crate) const SINK_COOKIE: &str = "Dragons-Love-Tacos";
/// "Nothing seen or acknowledged yet" as a point of reference.
pub(crate) const NONE_SEEN: u64 = u64::MAX;

/// One frame of the connector protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    Hello {
        version: String,
        cookie: String,
        program: String,
        instance: String,
    },
    Ok {
        credits: u32,
    },
    Error(String),
    Notify {
        stream: u64,
        name: String,
        por: u64,
    },
    NotifyAck {
        success: bool,
        stream: u64,
        por: u64,
    },
    Message {
        stream: u64,
        id: u64,
        event_time: i64,
        key: Vec<u8>,
        payload: Vec<u8>,
    },
    Ack {
        credits: u32,
        acks: Vec<(u64, u64)>,
    },
    Restart(String),
    Eos {
        stream: u64,
    },
}

/// What was wrong with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WireError(pub(crate) String);

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A cursor over one frame's bytes that fails, rather than panics, past the end.
pub(crate) struct Body<'a> {
    bytes: &'a [u8],
    what: &'static str,
}

impl<'a> Body<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Body { bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.bytes.len() < n {
            return Err(WireError(format!(
                "{}: {} byte(s) short",
                self.what,
                n - self.bytes.len()
            )));
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    pub(crate) fn string(&mut self) -> Result<String, WireError> {
        let n = self.u16()? as usize;
        self.text(n)
    }

    fn text(&mut self, n: usize) -> Result<String, WireError> {
        let what = self.what;
        String::from_utf8(self.take(n)?.to_vec())
            .map_err(|_| WireError(format!("{what}: a string is not UTF-8")))
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.bytes)
    }

    /// A count of items of at least `item` bytes each, checked against what is left (so a
    /// peer's count can never make us reserve more than the frame holds).
    pub(crate) fn count(&mut self, item: usize) -> Result<usize, WireError> {
        let n = self.u32()? as usize;
        if n.saturating_mul(item) > self.bytes.len() {
            return Err(WireError(format!(
                "{}: {n} item(s) do not fit in {} byte(s)",
                self.what,
                self.bytes.len()
            )));
        }
        Ok(n)
    }

    pub(crate) fn end(&self) -> Result<(), WireError> {
        if self.bytes.is_empty() {
            Ok(())
        } else {
            Err(WireError(format!(
                "{}: {} byte(s) left over",
                self.what,
                self.bytes.len()
            )))
        }
    }
}

/// Appends `s` as a short string (`u16 BE len + bytes`), cut at 65,535 bytes.
pub(crate) fn put_string(out: &mut Vec<u8>, s: &str) {
    let b = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

impl Frame {
    /// Reads one frame's payload (its tag and body, without the length header).
    pub(crate) fn decode(payload: &[u8]) -> Result<Frame, WireError> {
        let Some((&tag, body)) = payload.split_first() else {
            return Err(WireError("an empty frame (no tag)".into()));
        };
        let frame = match tag {
            0 => {
                let mut b = Body::new(body, "Hello");
                let f = Frame::Hello {
                    version: b.string()?,
                    cookie: b.string()?,
                    program: b.string()?,
                    instance: b.string()?,
                };
                b.end()?;
                f
            }
            1 => {
                let mut b = Body::new(body, "Ok");
                let f = Frame::Ok { credits: b.u32()? };
                b.end()?;
                f
            }
            2 => {
                let mut b = Body::new(body, "Error");
                Frame::Error(b.string()?)
            }
            3 => {
                let mut b = Body::new(body, "Notify");
                let f = Frame::Notify {
                    stream: b.u64()?,
                    name: b.string()?,
                    por: b.u64()?,
                };
                b.end()?;
                f
            }
            4 => {
                let mut b = Body::new(body, "NotifyAck");
                let f = Frame::NotifyAck {
                    success: b.u8()? != 0,
                    stream: b.u64()?,
                    por: b.u64()?,
                };
                b.end()?;
                f
            }
            5 => {
                let mut b = Body::new(body, "Message");
                let stream = b.u64()?;
                let id = b.u64()?;
                let event_time = b.u64()? as i64;
                let key_len = b.u16()? as usize;
                let key = b.take(key_len)?.to_vec();
                Frame::Message {
                    stream,
                    id,
                    event_time,
                    key,
                    payload: b.rest().to_vec(),
                }
            }
            6 => {
                let mut b = Body::new(body, "Ack");
                let credits = b.u32()?;
                let n = b.count(16)?;
                let mut acks = Vec::with_capacity(n);
                for _ in 0..n {
                    acks.push((b.u64()?, b.u64()?));
                }
                b.end()?;
                Frame::Ack { credits, acks }
            }
            7 => {
                let mut b = Body::new(body, "Restart");
                let n = b.u32()? as usize;
                let f = Frame::Restart(b.text(n)?);
                b.end()?;
                f
            }
            8 => {
                // The v3 write-up also shows a message id here; neither Wallaroo
                // implementation sends one, so anything after the stream id is ignored.
                let mut b = Body::new(body, "EosMessage");
                Frame::Eos { stream: b.u64()? }
            }
            t => return Err(WireError(format!("unknown frame type {t}"))),
        };
        Ok(frame)
    }

    /// Appends the frame, with its `u32` length header, to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello {
                version,
                cookie,
                program,
                instance,
            } => {
                out.push(0);
                for s in [version, cookie, program, instance] {
                    put_string(out, s);
                }
            }
            Frame::Ok { credits } => {
                out.push(1);
                out.extend_from_slice(&credits.to_be_bytes());
            }
            Frame::Error(text) => {
                out.push(2);
                put_string(out, text);
            }
            Frame::Notify { stream, name, por } => {
                out.push(3);
                out.extend_from_slice(&stream.to_be_bytes());
                put_string(out, name);
                out.extend_from_slice(&por.to_be_bytes());
            }
            Frame::NotifyAck {
                success,
                stream,
                por,
            } => {
                out.push(4);
                out.push(u8::from(*success));
                out.extend_from_slice(&stream.to_be_bytes());
                out.extend_from_slice(&por.to_be_bytes());
            }
            Frame::Message {
                stream,
                id,
                event_time,
                key,
                payload,
            } => {
                message_header(out, *stream, *id, *event_time, key);
                out.extend_from_slice(payload);
            }
            Frame::Ack { credits, acks } => {
                out.push(6);
                out.extend_from_slice(&credits.to_be_bytes());
                out.extend_from_slice(&(acks.len() as u32).to_be_bytes());
                for (stream, por) in acks {
                    out.extend_from_slice(&stream.to_be_bytes());
                    out.extend_from_slice(&por.to_be_bytes());
                }
            }
            Frame::Restart(address) => {
                out.push(7);
                out.extend_from_slice(&(address.len() as u32).to_be_bytes());
                out.extend_from_slice(address.as_bytes());
            }
            Frame::Eos { stream } => {
                out.push(8);
                out.extend_from_slice(&stream.to_be_bytes());
            }
        }
        set_len(out, start);
    }
}

/// Writes the length header of the frame that starts at `start` (everything after it).
pub(crate) fn set_len(out: &mut [u8], start: usize) {
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends a Message frame's tag and fields up to its payload (the length header is left to
/// [`set_len`]), so a sink can encode its payload straight after it.
pub(crate) fn message_header(out: &mut Vec<u8>, stream: u64, id: u64, event_time: i64, key: &[u8]) {
    out.push(5);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&event_time.to_be_bytes());
    let key = &key[..key.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(key.len() as u16).to_be_bytes());
    out.extend_from_slice(key);
}

/// The two-phase-commit messages a connector sink and the engine exchange inside Message
/// frames on stream 0 (the payload's first byte is the type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TwoPc {
    ListUncommitted {
        rtag: u64,
    },
    ReplyUncommitted {
        rtag: u64,
        txns: Vec<String>,
    },
    Phase1 {
        txn: String,
        ranges: Vec<(u64, u64, u64)>,
    },
    Reply {
        txn: String,
        commit: bool,
    },
    Phase2 {
        txn: String,
        commit: bool,
    },
    WorkersLeft {
        rtag: u64,
        workers: Vec<String>,
    },
}

impl TwoPc {
    pub(crate) fn decode(payload: &[u8]) -> Result<TwoPc, WireError> {
        let Some((&tag, body)) = payload.split_first() else {
            return Err(WireError("an empty two-phase-commit message".into()));
        };
        let strings = |b: &mut Body| -> Result<Vec<String>, WireError> {
            let n = b.count(2)?;
            (0..n).map(|_| b.string()).collect()
        };
        let m = match tag {
            201 => {
                let mut b = Body::new(body, "ListUncommitted");
                TwoPc::ListUncommitted { rtag: b.u64()? }
            }
            202 => {
                let mut b = Body::new(body, "ReplyUncommitted");
                let rtag = b.u64()?;
                TwoPc::ReplyUncommitted {
                    rtag,
                    txns: strings(&mut b)?,
                }
            }
            203 => {
                let mut b = Body::new(body, "Phase1");
                let txn = b.string()?;
                let n = b.count(24)?;
                let mut ranges = Vec::with_capacity(n);
                for _ in 0..n {
                    ranges.push((b.u64()?, b.u64()?, b.u64()?));
                }
                TwoPc::Phase1 { txn, ranges }
            }
            204 | 205 => {
                let mut b = Body::new(body, if tag == 204 { "Reply" } else { "Phase2" });
                let txn = b.string()?;
                let commit = b.u8()? != 0;
                if tag == 204 {
                    TwoPc::Reply { txn, commit }
                } else {
                    TwoPc::Phase2 { txn, commit }
                }
            }
            206 => {
                let mut b = Body::new(body, "WorkersLeft");
                let rtag = b.u64()?;
                TwoPc::WorkersLeft {
                    rtag,
                    workers: strings(&mut b)?,
                }
            }
            t => return Err(WireError(format!("unknown two-phase-commit message {t}"))),
        };
        Ok(m)
    }

    /// The payload of the stream-0 Message that carries it.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let put_strings = |out: &mut Vec<u8>, v: &[String]| {
            out.extend_from_slice(&(v.len() as u32).to_be_bytes());
            for s in v {
                put_string(out, s);
            }
        };
        match self {
            TwoPc::ListUncommitted { rtag } => {
                out.push(201);
                out.extend_from_slice(&rtag.to_be_bytes());
            }
            TwoPc::ReplyUncommitted { rtag, txns } => {
                out.push(202);
                out.extend_from_slice(&rtag.to_be_bytes());
                put_strings(&mut out, txns);
            }
            TwoPc::Phase1 { txn, ranges } => {
                out.push(203);
                put_string(&mut out, txn);
                out.extend_from_slice(&(ranges.len() as u32).to_be_bytes());
                for (s, a, b) in ranges {
                    for v in [s, a, b] {
                        out.extend_from_slice(&v.to_be_bytes());
                    }
                }
            }
            TwoPc::Reply { txn, commit } | TwoPc::Phase2 { txn, commit } => {
                out.push(if matches!(self, TwoPc::Reply { .. }) {
                    204
                } else {
                    205
                });
                put_string(&mut out, txn);
                out.push(u8::from(*commit));
            }
            TwoPc::WorkersLeft { rtag, workers } => {
                out.push(206);
                out.extend_from_slice(&rtag.to_be_bytes());
                put_strings(&mut out, workers);
            }
        }
        out
    }

    /// The stream-0 Message frame that carries it, with its length header.
    pub(crate) fn frame(&self, out: &mut Vec<u8>) {
        Frame::Message {
            stream: 0,
            id: 0,
            event_time: 0,
            key: Vec::new(),
            payload: self.encode(),
        }
        .encode(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(f: Frame) {
        let mut out = Vec::new();
        f.encode(&mut out);
        let len = u32::from_be_bytes([out[0], out[1], out[2], out[3]]) as usize;
        assert_eq!(len, out.len() - 4);
        assert_eq!(Frame::decode(&out[4..]), Ok(f));
    }

    #[test]
    fn frames_round_trip() {
        round_trip(Frame::Hello {
            version: "0.0.1".into(),
            cookie: "Dragons-Love-Tacos".into(),
            program: "p".into(),
            instance: "i".into(),
        });
        round_trip(Frame::Ok { credits: 500 });
        round_trip(Frame::Error("no".into()));
        round_trip(Frame::Notify {
            stream: 7,
            name: "s".into(),
            por: NONE_SEEN,
        });
        round_trip(Frame::NotifyAck {
            success: true,
            stream: 7,
            por: 3,
        });
        round_trip(Frame::Message {
            stream: 7,
            id: 9,
            event_time: -1,
            key: b"k".to_vec(),
            payload: b"payload".to_vec(),
        });
        round_trip(Frame::Ack {
            credits: 450,
            acks: vec![(7, 9), (8, 1)],
        });
        round_trip(Frame::Restart("127.0.0.1:7100".into()));
        round_trip(Frame::Eos { stream: 7 });
    }

    /// Byte for byte as Wallaroo's Python `Frame.encode` writes a Hello and an Ack.
    #[test]
    fn layouts_are_wallaroos() {
        let mut out = Vec::new();
        Frame::Ok { credits: 5 }.encode(&mut out);
        assert_eq!(out, [0, 0, 0, 5, 1, 0, 0, 0, 5]);
        out.clear();
        Frame::Ack {
            credits: 2,
            acks: vec![(1, 3)],
        }
        .encode(&mut out);
        let mut want = vec![0, 0, 0, 25, 6, 0, 0, 0, 2, 0, 0, 0, 1];
        want.extend_from_slice(&1u64.to_be_bytes());
        want.extend_from_slice(&3u64.to_be_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        assert!(Frame::decode(&[]).is_err());
        assert!(Frame::decode(&[42]).is_err());
        assert!(Frame::decode(&[3, 0, 0]).is_err());
        // A count that cannot fit in the frame.
        assert!(Frame::decode(&[6, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]).is_err());
        // A string longer than the frame.
        assert!(Frame::decode(&[2, 0, 9, b'a']).is_err());
        assert!(TwoPc::decode(&[203, 0, 1]).is_err());
        assert!(TwoPc::decode(&[199]).is_err());
    }

    #[test]
    fn two_phase_messages_round_trip() {
        for m in [
            TwoPc::ListUncommitted { rtag: 1 },
            TwoPc::ReplyUncommitted {
                rtag: 1,
                txns: vec!["a:c_id=3".into()],
            },
            TwoPc::Phase1 {
                txn: "a:c_id=3".into(),
                ranges: vec![(1, 0, 100)],
            },
            TwoPc::Reply {
                txn: "a:c_id=3".into(),
                commit: true,
            },
            TwoPc::Phase2 {
                txn: "a:c_id=3".into(),
                commit: false,
            },
            TwoPc::WorkersLeft {
                rtag: 2,
                workers: vec!["w".into()],
            },
        ] {
            assert_eq!(TwoPc::decode(&m.encode()), Ok(m));
        }
    }
}
