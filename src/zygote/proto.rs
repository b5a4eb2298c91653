//! The messages of the fork-server protocol and their JSON form. Pure: bytes
//! in, typed messages out (and back), so both sides and the tests agree on
//! one definition.
//!
//! ```text
//! fork server → ringmux  {"v":1,"type":"ready","pid":P}
//!                        {"v":1,"type":"fatal","error":"..."}            (then it exits)
//! ringmux → fork server  {"v":1,"type":"spawn","id":N,"addr":"127.0.0.1:PORT",
//!                         "dir":"/abs/dir","query":"a=1&b=2"}  + fds [listener, dir, status]
//! fork server → ringmux  {"v":1,"type":"spawned","id":N,"pid":C[,"fork_us":T]} + fds [pidfd of C]
//!                        {"v":1,"type":"error","id":N,"error":"..."}     (no child was made)
//!                        {"v":1,"type":"orphan","pid":C}                  + fds [pidfd of C]
//!                        (a child of ringmux that serves nobody: reap it)
//! child → ringmux        {"v":1,"type":"setup_done"}                       on the status fd
//! (on the status fd)     {"v":1,"type":"setup_failed","error":"..."}     (then it exits)
//! ```

use serde_json::{json, Map, Value};

use super::PROTOCOL_VERSION;

/// What the fork server says to ringmux.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromServer {
    /// Warm state is built; spawn requests may come.
    Ready {
        /// The fork server's pid.
        pid: u32,
    },
    /// It cannot go on (its setup failed); it exits next.
    Fatal {
        /// Why, for the log.
        error: String,
    },
    /// Child `id` runs as `pid` (its pidfd is attached).
    Spawned {
        /// The spawn request's id.
        id: u64,
        /// The child's pid.
        pid: u32,
        /// Optional: how long the fork itself took in the fork server, µs
        /// (for the log: a large parent's page tables are copied here).
        fork_us: Option<u64>,
    },
    /// A child of ringmux the fork server made that will serve nobody (a
    /// pre-forked child that died or is discarded): ringmux kills and reaps
    /// it (its pidfd is attached).
    Orphan {
        /// Its pid.
        pid: u32,
    },
    /// No child was made for `id`.
    Error {
        /// The spawn request's id.
        id: u64,
        /// Why.
        error: String,
    },
}

/// What a new child says on its status descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FromChild {
    /// Its per-rollout setup finished; it serves now.
    SetupDone,
    /// Its per-rollout setup raised; it exits next.
    SetupFailed {
        /// The error, for the log.
        error: String,
    },
}

/// A spawn request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spawn {
    /// Echoed in the answer.
    pub id: u64,
    /// The listening socket's address (the child's `RINGMUX_CHILD_ADDR`).
    pub addr: String,
    /// The child's directory (for messages; the child `fchdir`s to the fd).
    pub dir: String,
    /// The first request's query string, without `?`.
    pub query: String,
}

/// A message that is not valid protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Not a JSON object.
    #[error("not a JSON object: {0}")]
    Json(String),
    /// Another protocol version.
    #[error("protocol version {0:?}, expected {PROTOCOL_VERSION}")]
    Version(Option<u64>),
    /// A known type with a missing or mistyped field.
    #[error("message {kind:?} lacks a valid {field:?}")]
    Field {
        /// The message type.
        kind: String,
        /// The field.
        field: &'static str,
    },
    /// A type this side does not expect.
    #[error("unexpected message type {0:?}")]
    Type(String),
}

fn object(bytes: &[u8]) -> Result<(String, Map<String, Value>), ProtoError> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| ProtoError::Json(e.to_string()))?;
    let Value::Object(map) = v else {
        return Err(ProtoError::Json("not an object".into()));
    };
    let version = map.get("v").and_then(Value::as_u64);
    if version != Some(PROTOCOL_VERSION) {
        return Err(ProtoError::Version(version));
    }
    let kind = map
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| ProtoError::Field {
            kind: String::new(),
            field: "type",
        })?
        .to_string();
    Ok((kind, map))
}

fn field_u64(kind: &str, m: &Map<String, Value>, field: &'static str) -> Result<u64, ProtoError> {
    m.get(field)
        .and_then(Value::as_u64)
        .ok_or(ProtoError::Field {
            kind: kind.into(),
            field,
        })
}

fn field_pid(kind: &str, m: &Map<String, Value>) -> Result<u32, ProtoError> {
    u32::try_from(field_u64(kind, m, "pid")?)
        .ok()
        .filter(|p| *p > 0 && *p <= i32::MAX as u32)
        .ok_or(ProtoError::Field {
            kind: kind.into(),
            field: "pid",
        })
}

fn field_str(
    kind: &str,
    m: &Map<String, Value>,
    field: &'static str,
) -> Result<String, ProtoError> {
    m.get(field)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or(ProtoError::Field {
            kind: kind.into(),
            field,
        })
}

/// Longest error text kept from a peer (the rest is cut, marked `…`).
pub const MAX_ERROR_TEXT: usize = 2000;

fn error_text(kind: &str, m: &Map<String, Value>) -> Result<String, ProtoError> {
    let mut s = field_str(kind, m, "error")?;
    if s.len() > MAX_ERROR_TEXT {
        let mut cut = MAX_ERROR_TEXT;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    Ok(s)
}

impl FromServer {
    /// Parses a fork server's message.
    pub fn parse(bytes: &[u8]) -> Result<FromServer, ProtoError> {
        let (kind, m) = object(bytes)?;
        match kind.as_str() {
            "ready" => Ok(FromServer::Ready {
                pid: field_pid(&kind, &m)?,
            }),
            "fatal" => Ok(FromServer::Fatal {
                error: error_text(&kind, &m)?,
            }),
            "spawned" => Ok(FromServer::Spawned {
                id: field_u64(&kind, &m, "id")?,
                pid: field_pid(&kind, &m)?,
                fork_us: m.get("fork_us").and_then(Value::as_u64),
            }),
            "orphan" => Ok(FromServer::Orphan {
                pid: field_pid(&kind, &m)?,
            }),
            "error" => Ok(FromServer::Error {
                id: field_u64(&kind, &m, "id")?,
                error: error_text(&kind, &m)?,
            }),
            _ => Err(ProtoError::Type(kind)),
        }
    }

    /// Its JSON form.
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            FromServer::Ready { pid } => json!({"v": 1, "type": "ready", "pid": pid}),
            FromServer::Fatal { error } => json!({"v": 1, "type": "fatal", "error": error}),
            FromServer::Spawned { id, pid, fork_us } => match fork_us {
                Some(us) => {
                    json!({"v": 1, "type": "spawned", "id": id, "pid": pid, "fork_us": us})
                }
                None => json!({"v": 1, "type": "spawned", "id": id, "pid": pid}),
            },
            FromServer::Error { id, error } => {
                json!({"v": 1, "type": "error", "id": id, "error": error})
            }
            FromServer::Orphan { pid } => json!({"v": 1, "type": "orphan", "pid": pid}),
        };
        v.to_string().into_bytes()
    }
}

impl FromChild {
    /// Parses a child's status message.
    pub fn parse(bytes: &[u8]) -> Result<FromChild, ProtoError> {
        let (kind, m) = object(bytes)?;
        match kind.as_str() {
            "setup_done" => Ok(FromChild::SetupDone),
            "setup_failed" => Ok(FromChild::SetupFailed {
                error: error_text(&kind, &m)?,
            }),
            _ => Err(ProtoError::Type(kind)),
        }
    }

    /// Its JSON form.
    pub fn encode(&self) -> Vec<u8> {
        let v = match self {
            FromChild::SetupDone => json!({"v": 1, "type": "setup_done"}),
            FromChild::SetupFailed { error } => {
                json!({"v": 1, "type": "setup_failed", "error": error})
            }
        };
        v.to_string().into_bytes()
    }
}

impl Spawn {
    /// Parses a spawn request (the fork server's side).
    pub fn parse(bytes: &[u8]) -> Result<Spawn, ProtoError> {
        let (kind, m) = object(bytes)?;
        if kind != "spawn" {
            return Err(ProtoError::Type(kind));
        }
        Ok(Spawn {
            id: field_u64(&kind, &m, "id")?,
            addr: field_str(&kind, &m, "addr")?,
            dir: field_str(&kind, &m, "dir")?,
            query: field_str(&kind, &m, "query")?,
        })
    }

    /// Its JSON form.
    pub fn encode(&self) -> Vec<u8> {
        json!({
            "v": 1, "type": "spawn", "id": self.id, "addr": self.addr,
            "dir": self.dir, "query": self.query,
        })
        .to_string()
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        for m in [
            FromServer::Ready { pid: 7 },
            FromServer::Fatal { error: "x".into() },
            FromServer::Spawned {
                id: 3,
                pid: 9,
                fork_us: None,
            },
            FromServer::Spawned {
                id: 3,
                pid: 9,
                fork_us: Some(812),
            },
            FromServer::Error {
                id: 4,
                error: "no".into(),
            },
            FromServer::Orphan { pid: 12 },
        ] {
            assert_eq!(FromServer::parse(&m.encode()), Ok(m));
        }
        for m in [
            FromChild::SetupDone,
            FromChild::SetupFailed {
                error: "boom".into(),
            },
        ] {
            assert_eq!(FromChild::parse(&m.encode()), Ok(m));
        }
        let s = Spawn {
            id: 1,
            addr: "127.0.0.1:5".into(),
            dir: "/d".into(),
            query: "a=1&b=%20".into(),
        };
        assert_eq!(Spawn::parse(&s.encode()), Ok(s));
    }

    #[test]
    fn garbage_is_a_typed_error() {
        assert!(matches!(FromServer::parse(b"{"), Err(ProtoError::Json(_))));
        assert!(matches!(
            FromServer::parse(b"[1]"),
            Err(ProtoError::Json(_))
        ));
        assert_eq!(
            FromServer::parse(br#"{"v":2,"type":"ready","pid":1}"#),
            Err(ProtoError::Version(Some(2)))
        );
        assert_eq!(
            FromServer::parse(br#"{"type":"ready","pid":1}"#),
            Err(ProtoError::Version(None))
        );
        assert!(matches!(
            FromServer::parse(br#"{"v":1,"type":"ready","pid":0}"#),
            Err(ProtoError::Field { field: "pid", .. })
        ));
        assert!(matches!(
            FromServer::parse(br#"{"v":1,"type":"spawned","pid":5}"#),
            Err(ProtoError::Field { field: "id", .. })
        ));
        assert_eq!(
            FromServer::parse(br#"{"v":1,"type":"setup_done"}"#),
            Err(ProtoError::Type("setup_done".into()))
        );
    }

    #[test]
    fn long_errors_are_cut_on_a_char_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let m = FromChild::SetupFailed { error: long }.encode();
        let FromChild::SetupFailed { error } = FromChild::parse(&m).expect("parses") else {
            panic!("setup_failed expected")
        };
        assert!(error.len() <= MAX_ERROR_TEXT + '…'.len_utf8());
        assert!(error.ends_with('…'));
    }
}
