//! The demo child's tests: a real server on a loopback socket, real requests.

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;

use super::*;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Instant;

fn start_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local_addr");
    std::thread::spawn(move || serve(listener.into()));
    addr
}

struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("response body is JSON")
    }
}

struct Client {
    conn: Conn<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        Client {
            conn: Conn::new(stream),
        }
    }

    fn send(&mut self, raw: &[u8]) {
        self.conn.stream.write_all(raw).expect("write");
    }

    /// Reads the response head; returns status and headers.
    fn read_head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let httparse::Status::Complete(n) = resp.parse(&self.conn.buf).expect("parse") {
                let status = resp.code.expect("code");
                let hs = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_owned(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                self.conn.buf.drain(..n);
                return (status, hs);
            }
            assert!(self.conn.fill().expect("read") > 0, "EOF in response head");
        }
    }

    fn read_response(&mut self) -> Resp {
        let (status, headers) = self.read_head();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
        };
        if resp
            .header("transfer-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
        {
            resp.body = self.conn.read_chunked(usize::MAX).expect("chunked body");
        } else {
            let len: usize = resp
                .header("content-length")
                .expect("content-length")
                .parse()
                .expect("numeric content-length");
            resp.body = self.conn.read_fixed(len).expect("body");
        }
        resp
    }

    fn post_mcp(&mut self, body: &Value) -> Resp {
        let body = body.to_string();
        let req = format!(
            "POST /mcp?x=1 HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
             Accept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(req.as_bytes());
        self.read_response()
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes());
        self.read_response()
    }

    fn call_tool(&mut self, id: u64, name: &str, args: Value) -> Value {
        let resp = self.post_mcp(&json!({
            "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": name, "arguments": args}
        }));
        assert_eq!(resp.status, 200);
        let v = resp.json();
        assert_eq!(v["id"], json!(id));
        v
    }

    fn assert_closed(&mut self) {
        let mut byte = [0u8; 1];
        assert_eq!(self.conn.stream.read(&mut byte).expect("read"), 0);
    }
}

fn tool_text(v: &Value) -> &str {
    v["result"]["content"][0]["text"].as_str().expect("text")
}

#[test]
fn demo_mcp_session_on_one_connection() {
    let addr = start_server();
    let mut c = Client::connect(addr);

    let resp = c.post_mcp(&json!({
        "jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-03-26", "capabilities": {},
                   "clientInfo": {"name": "t", "version": "0"}}
    }));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let sid = resp
        .header("mcp-session-id")
        .expect("session id")
        .to_owned();
    assert!(sid.len() >= 16 && sid.bytes().all(|b| b.is_ascii_hexdigit()));
    let v = resp.json();
    assert_eq!(v["jsonrpc"], "2.0");
    assert_eq!(v["id"], 1);
    assert_eq!(v["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(v["result"]["serverInfo"]["name"], "ringmux-demo");
    assert_eq!(v["result"]["capabilities"]["tools"]["listChanged"], false);

    // Unknown requested version falls back to our default.
    let resp = c.post_mcp(&json!({
        "jsonrpc": "2.0", "id": "init-2", "method": "initialize",
        "params": {"protocolVersion": "1999-01-01"}
    }));
    assert_eq!(resp.json()["result"]["protocolVersion"], "2025-06-18");
    assert_ne!(resp.header("mcp-session-id"), Some(sid.as_str()));

    let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
    assert_eq!(resp.status, 202);
    assert!(resp.body.is_empty());

    // A client-sent JSON-RPC response is also just accepted.
    let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 7, "result": {}}));
    assert_eq!(resp.status, 202);

    let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}));
    assert_eq!(resp.json()["result"], json!({}));

    let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}));
    let v = resp.json();
    let tools = v["result"]["tools"].as_array().expect("tools");
    let names: Vec<&str> = tools.iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "scratch_write",
            "scratch_read",
            "echo",
            "whoami",
            "write_files"
        ]
    );
    assert!(tools.iter().all(|t| t["inputSchema"]["type"] == "object"));

    let v = c.call_tool(4, "scratch_write", json!({"value": "hello rollout"}));
    assert_eq!(tool_text(&v), "stored");
    assert_eq!(v["result"]["isError"], false);
    let v = c.call_tool(5, "scratch_read", json!({}));
    assert_eq!(tool_text(&v), "hello rollout");

    let v = c.call_tool(6, "echo", json!({"text": "ping pong"}));
    assert_eq!(tool_text(&v), "ping pong");

    let v = c.call_tool(7, "whoami", json!({}));
    let who: Value = serde_json::from_str(tool_text(&v)).expect("whoami JSON");
    assert_eq!(who["pid"], std::process::id());
    assert!(who["cwd"].is_string());

    // Bad arguments to a known tool: tool-level error.
    let v = c.call_tool(8, "echo", json!({}));
    assert_eq!(v["result"]["isError"], true);
    let v = c.call_tool(9, "write_files", json!({"count": 100_001}));
    assert_eq!(v["result"]["isError"], true);

    // Unknown tool: JSON-RPC invalid params.
    let v = c.call_tool(10, "nope", json!({}));
    assert_eq!(v["error"]["code"], -32602);

    let resp = c.post_mcp(&json!({"jsonrpc": "2.0", "id": 11, "method": "resources/list"}));
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["error"]["code"], -32601);
    assert_eq!(resp.json()["id"], 11);

    let resp = c.post_mcp(&json!([{"jsonrpc": "2.0", "id": 12, "method": "ping"}]));
    assert_eq!(resp.status, 400);
    assert_eq!(resp.json()["error"]["code"], -32600);

    // Other routes, same connection.
    let resp = c.get("/healthz");
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"ok"[..]));
    let resp = c.get("/mcp");
    assert_eq!(resp.status, 405);
    assert_eq!(resp.header("allow"), Some("POST"));
    c.send(b"DELETE /mcp HTTP/1.1\r\nHost: t\r\nMcp-Session-Id: abc\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(c.get("/nope").status, 404);

    // Connection: close is honoured.
    c.send(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("connection"), Some("close"));
    c.assert_closed();
}

#[test]
fn demo_chunked_request_body_and_pipelining() {
    let addr = start_server();
    let mut c = Client::connect(addr);
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                      "params": {"name": "echo", "arguments": {"text": "chunky"}}})
    .to_string();
    let (a, b) = body.split_at(10);
    let req = format!(
        "POST /mcp HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x};ext=1\r\n{a}\r\n{:X}\r\n{b}\r\n0\r\nX-Trailer: y\r\n\r\n\
         GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n",
        a.len(),
        b.len()
    );
    // Dribble the bytes to exercise partial reads.
    for piece in req.as_bytes().chunks(7) {
        c.send(piece);
        std::thread::sleep(Duration::from_millis(1));
    }
    let resp = c.read_response();
    assert_eq!(resp.status, 200);
    assert_eq!(tool_text(&resp.json()), "chunky");
    assert_eq!(c.read_response().status, 200);

    // Expect: 100-continue gets an interim response before the body is sent.
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}).to_string();
    c.send(
        format!(
            "POST /mcp HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    let (status, _) = c.read_head();
    assert_eq!(status, 100);
    c.send(body.as_bytes());
    let resp = c.read_response();
    assert_eq!(resp.json()["result"], json!({}));
}

#[test]
fn demo_invalid_json_and_malformed_http() {
    let addr = start_server();
    let mut c = Client::connect(addr);
    c.send(b"POST /mcp HTTP/1.1\r\nHost: t\r\nContent-Length: 9\r\n\r\n{not json");
    let resp = c.read_response();
    assert_eq!(resp.status, 400);
    let v = resp.json();
    assert_eq!(v["error"]["code"], -32700);
    assert_eq!(v["id"], Value::Null);
    // Still usable: invalid JSON is not an HTTP framing error.
    assert_eq!(c.get("/healthz").status, 200);

    let mut c = Client::connect(addr);
    c.send(b"GARBAGE\x01 / HTTP/9.9\r\n\r\n");
    assert_eq!(c.read_response().status, 400);
    c.assert_closed();

    let mut c = Client::connect(addr);
    c.send(b"POST /mcp HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
    assert_eq!(c.read_response().status, 400);
    c.assert_closed();
}

#[test]
fn demo_blob_returns_the_asked_size() {
    let addr = start_server();
    let mut c = Client::connect(addr);
    c.send(b"GET /blob?bytes=70000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), 70000);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    c.send(b"GET /blob HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().body.len(), 65536);
    c.send(b"GET /blob?bytes=lots HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().status, 400);
}

#[test]
fn demo_sse_streams_unbuffered() {
    let addr = start_server();
    let mut c = Client::connect(addr);
    let (n, interval_ms) = (5u64, 150u64);
    c.send(
        format!("GET /sse?n={n}&interval_ms={interval_ms} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    );
    let (status, headers) = c.read_head();
    assert_eq!(status, 200);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(header("cache-control").as_deref(), Some("no-cache"));
    assert_eq!(header("transfer-encoding").as_deref(), Some("chunked"));

    let mut arrivals = Vec::new();
    loop {
        let size_line = c.conn.read_line().expect("chunk size");
        let size =
            usize::from_str_radix(std::str::from_utf8(&size_line).expect("utf8"), 16).expect("hex");
        if size == 0 {
            assert!(c.conn.read_line().expect("final CRLF").is_empty());
            break;
        }
        let data = c.conn.read_fixed(size + 2).expect("chunk");
        arrivals.push(Instant::now());
        let event = std::str::from_utf8(&data[..size]).expect("utf8");
        let i = arrivals.len() - 1;
        assert_eq!(event, format!("data: {{\"i\": {i}}}\n\n"));
    }
    assert_eq!(arrivals.len() as u64, n);
    // The first event must arrive well before the last one is even sent.
    let spread = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        spread >= Duration::from_millis((n - 1) * interval_ms * 3 / 4),
        "events arrived together ({spread:?}): stream is buffered"
    );
    // Keep-alive after the stream.
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(c.get("/sse?n=abc").status, 400);
}

#[test]
fn demo_write_files_creates_files() {
    let root = std::env::temp_dir().join(format!(
        "ringmux-demo-test-{}-{}",
        std::process::id(),
        new_session_id()
    ));
    std::fs::create_dir_all(&root).expect("mkdir");

    fn count_files(dir: &Path) -> u64 {
        let mut n = 0;
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                n += count_files(&entry.path());
            } else {
                assert_eq!(entry.metadata().expect("meta").len(), 1);
                n += 1;
            }
        }
        n
    }

    assert_eq!(write_files_in(&root, 250, 4).expect("write"), 250);
    assert_eq!(count_files(&root), 250);
    assert!(root.join("d0/d1/d2/d3/f3").is_file());
    assert!(!root.join("d0/d1/d2/d3/d4").exists());

    // Through the tool layer (with the test-only root), default dirs = 1.
    let sub = root.join("tool");
    std::fs::create_dir_all(&sub).expect("mkdir");
    let args = json!({"count": 10});
    let out = tool_write_files(args.as_object().expect("obj"), &sub).expect("tool");
    assert_eq!(out.text, "10");
    assert_eq!(count_files(&sub), 10);
    assert!(sub.join("d0/f9").is_file());

    let args = json!({"count": 5, "dirs": 0});
    assert!(tool_write_files(args.as_object().expect("obj"), &sub).is_err());
    assert_eq!(write_files_in(&sub.join("empty"), 0, 3).expect("zero"), 0);

    std::fs::remove_dir_all(&root).expect("cleanup");
}
