//! A minimal client of strongSwan's VICI protocol (charon's control
//! socket): the request/response commands flannel needs, over a Unix
//! socket, with no task of its own.
//!
//! Wire format (strongSwan's `src/libcharon/plugins/vici/README.md`): every
//! packet is a 32-bit big-endian length and the packet; a packet is a type
//! byte, for a command request a length-prefixed name, then a message. A
//! message is a sequence of elements: section start (name) and end,
//! key/value (8-bit name length, 16-bit value length), list start (name),
//! list item (16-bit length) and list end.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const CMD_REQUEST: u8 = 0;
const CMD_RESPONSE: u8 = 1;
const CMD_UNKNOWN: u8 = 2;
const SECTION_START: u8 = 1;
const SECTION_END: u8 = 2;
const KEY_VALUE: u8 = 3;
const LIST_START: u8 = 4;
const LIST_ITEM: u8 = 5;
const LIST_END: u8 = 6;

/// How long one command may take (charon answers at once; a load-conn
/// that starts an IKE_SA does not wait for it).
const TIMEOUT: Duration = Duration::from_secs(30);

/// A VICI value.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// A key/value string.
    Str(String),
    /// A list of strings.
    List(Vec<String>),
    /// A section.
    Section(Message),
}

/// A VICI message: named values in order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Message(pub Vec<(String, Value)>);

// Messages carry the PSK (load-shared): never print their values.
impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
        write!(f, "Message{keys:?}")
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Str(_) => f.write_str("Str(..)"),
            Value::List(l) => write!(f, "List({} items)", l.len()),
            Value::Section(m) => write!(f, "Section({m:?})"),
        }
    }
}

impl Message {
    /// An empty message.
    pub fn new() -> Message {
        Message::default()
    }

    /// Adds `key = value`.
    pub fn kv(mut self, key: &str, value: impl Into<String>) -> Message {
        self.0.push((key.to_string(), Value::Str(value.into())));
        self
    }

    /// Adds a list.
    pub fn list<S: Into<String>>(
        mut self,
        key: &str,
        items: impl IntoIterator<Item = S>,
    ) -> Message {
        let items = items.into_iter().map(Into::into).collect();
        self.0.push((key.to_string(), Value::List(items)));
        self
    }

    /// Adds a section.
    pub fn section(mut self, key: &str, section: Message) -> Message {
        self.0.push((key.to_string(), Value::Section(section)));
        self
    }

    /// The string value of `key`.
    pub fn str(&self, key: &str) -> Option<&str> {
        self.0.iter().find_map(|(k, v)| match v {
            Value::Str(s) if k == key => Some(s.as_str()),
            _ => None,
        })
    }

    /// The list value of `key`.
    pub fn get_list(&self, key: &str) -> Option<&[String]> {
        self.0.iter().find_map(|(k, v)| match v {
            Value::List(l) if k == key => Some(l.as_slice()),
            _ => None,
        })
    }

    /// Encodes the message.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), ViciError> {
        for (k, v) in &self.0 {
            match v {
                Value::Str(s) => {
                    out.push(KEY_VALUE);
                    name(out, k)?;
                    value(out, s.as_bytes())?;
                }
                Value::List(items) => {
                    out.push(LIST_START);
                    name(out, k)?;
                    for i in items {
                        out.push(LIST_ITEM);
                        value(out, i.as_bytes())?;
                    }
                    out.push(LIST_END);
                }
                Value::Section(m) => {
                    out.push(SECTION_START);
                    name(out, k)?;
                    m.encode(out)?;
                    out.push(SECTION_END);
                }
            }
        }
        Ok(())
    }

    /// Decodes a message.
    pub fn decode(buf: &[u8]) -> Result<Message, ViciError> {
        let mut pos = 0;
        let m = decode_section(buf, &mut pos, 0)?;
        if pos != buf.len() {
            return Err(ViciError::Protocol("unbalanced section end".into()));
        }
        Ok(m)
    }
}

fn name(out: &mut Vec<u8>, n: &str) -> Result<(), ViciError> {
    let len =
        u8::try_from(n.len()).map_err(|_| ViciError::Protocol(format!("name {n} too long")))?;
    out.push(len);
    out.extend_from_slice(n.as_bytes());
    Ok(())
}

fn value(out: &mut Vec<u8>, v: &[u8]) -> Result<(), ViciError> {
    let len = u16::try_from(v.len()).map_err(|_| ViciError::Protocol("value too long".into()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(v);
    Ok(())
}

fn take<'a>(buf: &'a [u8], pos: &mut usize, n: usize) -> Result<&'a [u8], ViciError> {
    let s = buf
        .get(*pos..*pos + n)
        .ok_or_else(|| ViciError::Protocol("truncated message".into()))?;
    *pos += n;
    Ok(s)
}

fn take_name(buf: &[u8], pos: &mut usize) -> Result<String, ViciError> {
    let len = take(buf, pos, 1)?[0] as usize;
    Ok(String::from_utf8_lossy(take(buf, pos, len)?).into_owned())
}

fn take_value(buf: &[u8], pos: &mut usize) -> Result<String, ViciError> {
    let l = take(buf, pos, 2)?;
    let len = u16::from_be_bytes([l[0], l[1]]) as usize;
    Ok(String::from_utf8_lossy(take(buf, pos, len)?).into_owned())
}

fn decode_section(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Message, ViciError> {
    let mut m = Message::new();
    while *pos < buf.len() {
        let kind = take(buf, pos, 1)?[0];
        match kind {
            SECTION_START => {
                let n = take_name(buf, pos)?;
                let s = decode_section(buf, pos, depth + 1)?;
                m.0.push((n, Value::Section(s)));
            }
            SECTION_END if depth > 0 => return Ok(m),
            KEY_VALUE => {
                let n = take_name(buf, pos)?;
                let v = take_value(buf, pos)?;
                m.0.push((n, Value::Str(v)));
            }
            LIST_START => {
                let n = take_name(buf, pos)?;
                let mut items = Vec::new();
                loop {
                    match take(buf, pos, 1)?[0] {
                        LIST_ITEM => items.push(take_value(buf, pos)?),
                        LIST_END => break,
                        other => {
                            return Err(ViciError::Protocol(format!("element {other} in a list")));
                        }
                    }
                }
                m.0.push((n, Value::List(items)));
            }
            other => return Err(ViciError::Protocol(format!("unexpected element {other}"))),
        }
    }
    if depth > 0 {
        return Err(ViciError::Protocol("section not closed".into()));
    }
    Ok(m)
}

/// Errors talking to charon. None carries a message's values (the PSK).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViciError {
    /// The socket failed.
    #[error("VICI socket {path}: {source}")]
    Io {
        /// The socket path.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// charon did not answer in time.
    #[error("VICI command {0} timed out")]
    Timeout(String),
    /// charon does not know the command.
    #[error("charon does not know the VICI command {0}")]
    UnknownCommand(String),
    /// The command ran and failed (`success = no`).
    #[error("VICI command {command} failed: {errmsg}")]
    Failed {
        /// The command.
        command: String,
        /// charon's `errmsg`.
        errmsg: String,
    },
    /// A malformed packet.
    #[error("VICI protocol error: {0}")]
    Protocol(String),
}

/// A connection to charon's VICI socket.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: String,
}

/// The socket path of a VICI URI (`unix:///var/run/charon.vici` or a plain
/// path).
pub fn socket_path(uri: &str) -> Result<&str, ViciError> {
    if let Some(p) = uri.strip_prefix("unix://") {
        Ok(p)
    } else if uri.starts_with('/') {
        Ok(uri)
    } else {
        Err(ViciError::Protocol(format!(
            "unsupported VICI URI {uri}: only unix:///path sockets are supported"
        )))
    }
}

impl Client {
    /// Connects to the socket of `uri`.
    pub async fn connect(uri: &str) -> Result<Client, ViciError> {
        let path = socket_path(uri)?.to_string();
        let stream = UnixStream::connect(&path)
            .await
            .map_err(|source| ViciError::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Client { stream, path })
    }

    fn io(&self, source: std::io::Error) -> ViciError {
        ViciError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends command `cmd` with `msg` and returns the response message.
    /// A response with `success = no` is [`ViciError::Failed`].
    pub async fn request(&mut self, cmd: &str, msg: &Message) -> Result<Message, ViciError> {
        let fut = self.exchange(cmd, msg);
        let resp = tokio::time::timeout(TIMEOUT, fut)
            .await
            .map_err(|_| ViciError::Timeout(cmd.to_string()))??;
        if resp.str("success") == Some("no") {
            return Err(ViciError::Failed {
                command: cmd.to_string(),
                errmsg: resp.str("errmsg").unwrap_or("no reason given").to_string(),
            });
        }
        Ok(resp)
    }

    async fn exchange(&mut self, cmd: &str, msg: &Message) -> Result<Message, ViciError> {
        let mut packet = vec![CMD_REQUEST];
        name(&mut packet, cmd)?;
        msg.encode(&mut packet)?;
        let len = u32::try_from(packet.len())
            .map_err(|_| ViciError::Protocol("packet too large".into()))?;
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&packet);
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| self.io(e))?;
        loop {
            let mut len = [0u8; 4];
            self.stream
                .read_exact(&mut len)
                .await
                .map_err(|e| self.io(e))?;
            let len = u32::from_be_bytes(len) as usize;
            if len == 0 || len > 1 << 24 {
                return Err(ViciError::Protocol(format!("packet length {len}")));
            }
            let mut buf = vec![0u8; len];
            self.stream
                .read_exact(&mut buf)
                .await
                .map_err(|e| self.io(e))?;
            match buf[0] {
                CMD_RESPONSE => return Message::decode(&buf[1..]),
                CMD_UNKNOWN => return Err(ViciError::UnknownCommand(cmd.to_string())),
                // Events of registrations we never make: skip.
                _ => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_layout() {
        let m = Message::new()
            .kv("type", "IKE")
            .list("owners", ["10.0.0.1"])
            .section("c", Message::new().kv("version", "2"));
        let mut out = Vec::new();
        m.encode(&mut out).unwrap();
        assert_eq!(
            out,
            [
                &[KEY_VALUE, 4][..],
                b"type",
                &[0, 3],
                b"IKE",
                &[LIST_START, 6],
                b"owners",
                &[LIST_ITEM, 0, 8],
                b"10.0.0.1",
                &[LIST_END, SECTION_START, 1],
                b"c",
                &[KEY_VALUE, 7],
                b"version",
                &[0, 1],
                b"2",
                &[SECTION_END],
            ]
            .concat()
        );
        assert_eq!(Message::decode(&out).unwrap(), m);
        assert!(Message::decode(&out[..out.len() - 1]).is_err());
    }

    #[test]
    fn values_are_never_printed() {
        let m = Message::new().kv("data", "the-secret");
        assert!(!format!("{m:?}").contains("the-secret"));
        assert_eq!(
            socket_path("unix:///run/x/charon.vici").unwrap(),
            "/run/x/charon.vici"
        );
        assert!(socket_path("tcp://1.2.3.4:4502").is_err());
    }
}
