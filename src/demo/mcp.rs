//! The demo's MCP side: one JSON-RPC 2.0 message per `POST /mcp`,
//! `initialize`, `ping`, `tools/list`, `tools/call` and the errors of each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::*;

pub(super) const PARSE_ERROR: i64 = -32700;
pub(super) const INVALID_REQUEST: i64 = -32600;
pub(super) const METHOD_NOT_FOUND: i64 = -32601;
pub(super) const INVALID_PARAMS: i64 = -32602;

pub(super) fn rpc_error(id: Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

pub(super) fn valid_id(id: &Value) -> bool {
    id.is_string() || id.is_i64() || id.is_u64()
}

/// Handles one `POST /mcp` body.
pub(super) fn handle_mcp(body: &[u8]) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(body) else {
        return Response::json(400, &rpc_error(Value::Null, PARSE_ERROR, "Parse error"));
    };
    let obj = match msg {
        Value::Object(obj) => obj,
        Value::Array(_) => {
            return Response::json(
                400,
                &rpc_error(
                    Value::Null,
                    INVALID_REQUEST,
                    "Batch requests are not supported",
                ),
            )
        }
        _ => {
            return Response::json(
                400,
                &rpc_error(Value::Null, INVALID_REQUEST, "Invalid Request"),
            )
        }
    };
    let id = obj.get("id").filter(|id| valid_id(id)).cloned();
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Response::json(
            400,
            &rpc_error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "Invalid Request: jsonrpc must be \"2.0\"",
            ),
        );
    }
    match (obj.get("method"), obj.get("id")) {
        // Notification: accepted, nothing to say.
        (Some(Value::String(_)), None) => Response::new(202),
        (Some(Value::String(method)), Some(_)) if id.is_some() => {
            let id = id.unwrap_or(Value::Null);
            let (reply, session) = dispatch(method, obj.get("params"));
            let body = match reply {
                Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                Err((code, message)) => rpc_error(id, code, &message),
            };
            let resp = Response::json(200, &body);
            match session {
                Some(sid) => resp.header("Mcp-Session-Id", sid),
                None => resp,
            }
        }
        // A response to a server request (we never send any; accept it anyway).
        (None, Some(_)) if obj.contains_key("result") || obj.contains_key("error") => {
            Response::new(202)
        }
        _ => Response::json(
            400,
            &rpc_error(
                id.unwrap_or(Value::Null),
                INVALID_REQUEST,
                "Invalid Request",
            ),
        ),
    }
}

pub(super) type RpcResult = Result<Value, (i64, String)>;

/// Runs one request; the second value is a new session id (initialize only).
pub(super) fn dispatch(method: &str, params: Option<&Value>) -> (RpcResult, Option<String>) {
    match method {
        "initialize" => {
            let requested = params
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str);
            let version = match requested {
                Some(v) if SUPPORTED_PROTOCOL_VERSIONS.contains(&v) => v,
                _ => DEFAULT_PROTOCOL_VERSION,
            };
            let result = json!({
                "protocolVersion": version,
                "capabilities": {"tools": {"listChanged": false}},
                "serverInfo": {"name": "ringmux-demo", "version": env!("CARGO_PKG_VERSION")},
                "instructions": INSTRUCTIONS,
            });
            (Ok(result), Some(new_session_id()))
        }
        "ping" => (Ok(json!({})), None),
        "tools/list" => (Ok(json!({"tools": tool_definitions()})), None),
        "tools/call" => (call_tool(params), None),
        _ => (
            Err((METHOD_NOT_FOUND, format!("Method not found: {method}"))),
            None,
        ),
    }
}

/// 128 random-looking bits as hex: SHA-256 of time, pid, thread and a counter.
pub(super) fn new_session_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut hasher = Sha256::new();
    hasher.update(nanos.to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}
