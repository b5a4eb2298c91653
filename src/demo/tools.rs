//! The demo's tools and their per-process (so per-rollout) state:
//! `scratch_write`, `scratch_read`, `echo`, `whoami`, `write_files`.

use std::io::{self};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::*;

/// The per-process (= per-rollout) scratch slot.
pub(super) static SCRATCH: Mutex<String> = Mutex::new(String::new());

pub(super) fn tool_definitions() -> Value {
    json!([
        {
            "name": "scratch_write",
            "description": "Store a string in this rollout's scratch slot (replaces any previous value).",
            "inputSchema": {
                "type": "object",
                "properties": {"value": {"type": "string", "description": "Value to store."}},
                "required": ["value"]
            }
        },
        {
            "name": "scratch_read",
            "description": "Return the value in this rollout's scratch slot (empty string if nothing was stored).",
            "inputSchema": {"type": "object", "properties": {}}
        },
        {
            "name": "echo",
            "description": "Return the given text unchanged.",
            "inputSchema": {
                "type": "object",
                "properties": {"text": {"type": "string", "description": "Text to echo."}},
                "required": ["text"]
            }
        },
        {
            "name": "whoami",
            "description": "Return this server process's pid, parent pid and working directory as JSON (forked children: also the fork server's pid and the query their per-rollout setup got).",
            "inputSchema": {"type": "object", "properties": {}}
        },
        {
            "name": "write_files",
            "description": "Create `count` one-byte files spread round-robin over `dirs` nested \
                            subdirectories (d0, d0/d1, ...) of the working directory; returns the \
                            number of files created.",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "count": {
                        "type": "integer", "minimum": 0, "maximum": MAX_WRITE_FILES,
                        "description": "Number of files to create."
                    },
                    "dirs": {
                        "type": "integer", "minimum": 1, "maximum": MAX_WRITE_DIRS, "default": 1,
                        "description": "Nesting depth: number of nested directories to spread the files over."
                    }
                },
                "required": ["count"]
            }
        }
    ])
}

/// A successful tool run: the text content plus optional structured content.
pub(super) struct ToolOutput {
    pub(super) text: String,
    pub(super) structured: Option<Value>,
}

impl ToolOutput {
    pub(super) fn text(text: impl Into<String>) -> Self {
        ToolOutput {
            text: text.into(),
            structured: None,
        }
    }
}

pub(super) fn call_tool(params: Option<&Value>) -> RpcResult {
    let Some(params) = params.and_then(Value::as_object) else {
        return Err((INVALID_PARAMS, "tools/call needs a params object".into()));
    };
    let Some(name) = params.get("name").and_then(Value::as_str) else {
        return Err((INVALID_PARAMS, "tools/call needs a string `name`".into()));
    };
    let empty = Map::new();
    let args = match params.get("arguments") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(args)) => args,
        Some(_) => return Err((INVALID_PARAMS, "`arguments` must be an object".into())),
    };
    let outcome = match name {
        "scratch_write" => tool_scratch_write(args),
        "scratch_read" => Ok(tool_scratch_read()),
        "echo" => string_arg(args, "text").map(ToolOutput::text),
        "whoami" => tool_whoami(),
        "write_files" => tool_write_files(args, Path::new(".")),
        _ => return Err((INVALID_PARAMS, format!("Unknown tool: {name}"))),
    };
    Ok(match outcome {
        Ok(out) => {
            let mut result = json!({
                "content": [{"type": "text", "text": out.text}],
                "isError": false,
            });
            if let (Some(structured), Some(obj)) = (out.structured, result.as_object_mut()) {
                obj.insert("structuredContent".into(), structured);
            }
            result
        }
        Err(message) => json!({
            "content": [{"type": "text", "text": message}],
            "isError": true,
        }),
    })
}

pub(super) fn string_arg(args: &Map<String, Value>, key: &str) -> Result<String, String> {
    match args.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(format!("argument `{key}` must be a string")),
        None => Err(format!("missing required argument `{key}`")),
    }
}

/// A non-negative integer argument in `min..=max` (integral floats are accepted).
pub(super) fn int_arg(
    args: &Map<String, Value>,
    key: &str,
    default: Option<u64>,
    min: u64,
    max: u64,
) -> Result<u64, String> {
    let value = match args.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| format!("missing required argument `{key}`"))?
        }
        Some(v) => v
            .as_u64()
            .or_else(|| {
                v.as_f64()
                    .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f <= u64::MAX as f64)
                    .map(|f| f as u64)
            })
            .ok_or_else(|| format!("argument `{key}` must be a non-negative integer"))?,
    };
    if value < min || value > max {
        return Err(format!(
            "argument `{key}` must be between {min} and {max}, got {value}"
        ));
    }
    Ok(value)
}

/// Sets the scratch slot before serving (the fork server's warm state, which
/// every forked child starts from).
pub fn seed_scratch(value: String) {
    *scratch() = value;
}

pub(super) fn scratch() -> std::sync::MutexGuard<'static, String> {
    SCRATCH
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn tool_scratch_write(args: &Map<String, Value>) -> Result<ToolOutput, String> {
    let value = string_arg(args, "value")?;
    *scratch() = value;
    Ok(ToolOutput::text("stored"))
}

pub(super) fn tool_scratch_read() -> ToolOutput {
    ToolOutput::text(scratch().clone())
}

pub(super) fn tool_whoami() -> Result<ToolOutput, String> {
    let cwd = std::env::current_dir().map_err(|e| format!("cannot read working directory: {e}"))?;
    let mut info = json!({
        "pid": std::process::id(),
        "ppid": std::os::unix::process::parent_id(),
        "cwd": cwd.to_string_lossy(),
    });
    if let (Some(r), Some(obj)) = (crate::zygote::demo::rollout(), info.as_object_mut()) {
        obj.insert("fork_server_pid".into(), json!(r.fork_server_pid));
        obj.insert("setup_query".into(), json!(r.setup_query));
    }
    Ok(ToolOutput {
        text: info.to_string(),
        structured: Some(info),
    })
}

pub(super) fn tool_write_files(
    args: &Map<String, Value>,
    root: &Path,
) -> Result<ToolOutput, String> {
    let count = int_arg(args, "count", None, 0, MAX_WRITE_FILES)?;
    let dirs = int_arg(args, "dirs", Some(1), 1, MAX_WRITE_DIRS)?;
    let created = write_files_in(root, count, dirs).map_err(|e| format!("write_files: {e}"))?;
    Ok(ToolOutput {
        text: created.to_string(),
        structured: Some(json!({"created": created})),
    })
}

/// Creates `count` one-byte files named `f<j>` under `root`, spread round-robin
/// over the nested directories `d0`, `d0/d1`, …, `d0/…/d<dirs-1>` (only as many
/// levels as there are files). Existing files of the same name are overwritten.
/// Returns the number of files written.
pub(super) fn write_files_in(root: &Path, count: u64, dirs: u64) -> io::Result<u64> {
    let levels = dirs.max(1).min(count);
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut dir = root.to_path_buf();
    for level in 0..levels {
        dir.push(format!("d{level}"));
        paths.push(dir.clone());
    }
    if let Some(deepest) = paths.last() {
        std::fs::create_dir_all(deepest)?;
    }
    let mut written = 0;
    for j in 0..count {
        let Some(dir) = paths.get((j % levels) as usize) else {
            break;
        };
        std::fs::write(dir.join(format!("f{j}")), b"x")?;
        written += 1;
    }
    Ok(written)
}
