//! `probe`: a small open-loop latency probe for one keep-alive HTTP/1.1
//! connection, used by the benchmark scripts where a Python client's own
//! jitter would drown what is measured.
//!
//! Requests are scheduled every `1/rate` seconds; each latency is measured from
//! its *scheduled* start, so a stall is counted in full for every request it
//! delays (no coordinated omission). Optionally, a side request (`--side-url`)
//! is fired from another thread `--side-at-ms` after the start (the cleanup
//! benchmark closes a rollout this way) and its own latency reported.
//!
//! Usage:
//!   cargo run --release --example probe -- --addr 127.0.0.1:PORT \
//!       --path '/mcp?vf_state_secret=k' --body '{...}' --rate 500 --secs 1.5 \
//!       [--side-url '/vf/close?vf_state_secret=v' --side-at-ms 300] \
//!       [--series FILE]
//! Prints one JSON object: count, p50/p90/p99/p999/max (µs), side_ms. With
//! `--series`, FILE gets one line per request: `scheduled_offset_us latency_us`
//! (the latency-against-time plots of the benchmark harness).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

struct Args {
    addr: String,
    path: String,
    body: String,
    rate: f64,
    secs: f64,
    side_path: Option<String>,
    side_at_ms: u64,
    series: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        addr: String::new(),
        path: "/".into(),
        body: String::new(),
        rate: 500.0,
        secs: 1.0,
        side_path: None,
        side_at_ms: 0,
        series: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = val()?,
            "--path" => a.path = val()?,
            "--body" => a.body = val()?,
            "--rate" => a.rate = val()?.parse().map_err(|e| format!("--rate: {e}"))?,
            "--secs" => a.secs = val()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--side-url" => a.side_path = Some(val()?),
            "--series" => a.series = Some(val()?),
            "--side-at-ms" => {
                a.side_at_ms = val()?.parse().map_err(|e| format!("--side-at-ms: {e}"))?
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.addr.is_empty() {
        return Err("--addr is required".into());
    }
    if !(a.rate > 0.0 && a.rate <= 100_000.0 && a.secs > 0.0 && a.secs <= 600.0) {
        return Err("--rate must be in (0, 100000] and --secs in (0, 600]".into());
    }
    Ok(a)
}

fn request(path: &str, body: &str) -> Vec<u8> {
    if body.is_empty() {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
    } else {
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Reads one Content-Length-framed response; returns its status.
fn read_response(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<u16, String> {
    buf.clear();
    let mut chunk = [0u8; 16384];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(head_len)) = resp.parse(buf) {
            let status = resp.code.unwrap_or(0);
            let len = resp
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or("response without Content-Length")?;
            while buf.len() < head_len + len {
                let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err("connection closed mid-body".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return Ok(status);
        }
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed before a response".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn pct(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((q * sorted.len() as f64) as usize).min(sorted.len() - 1)]
}

fn run() -> Result<(), String> {
    let a = parse_args()?;
    let mut s = TcpStream::connect(&a.addr).map_err(|e| format!("connect {}: {e}", a.addr))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let req = request(&a.path, &a.body);
    let mut buf = Vec::with_capacity(16384);
    // Warm-up (the key's child may need to start).
    for _ in 0..20 {
        s.write_all(&req).map_err(|e| e.to_string())?;
        read_response(&mut s, &mut buf)?;
    }
    let side = a.side_path.clone().map(|p| {
        let addr = a.addr.clone();
        let at = Duration::from_millis(a.side_at_ms);
        std::thread::spawn(move || -> Result<f64, String> {
            std::thread::sleep(at);
            let t = Instant::now();
            let mut c = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(120)))
                .map_err(|e| e.to_string())?;
            c.write_all(&request(&p, "")).map_err(|e| e.to_string())?;
            let mut b = Vec::new();
            let st = read_response(&mut c, &mut b)?;
            if st != 200 {
                return Err(format!("side request got {st}"));
            }
            Ok(t.elapsed().as_secs_f64() * 1e3)
        })
    });
    let period = Duration::from_secs_f64(1.0 / a.rate);
    let n = (a.secs * a.rate) as u64;
    let mut lat = Vec::with_capacity(n as usize);
    let start = Instant::now();
    for i in 0..n {
        let due = start + period * i as u32;
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
        }
        s.write_all(&req).map_err(|e| e.to_string())?;
        let st = read_response(&mut s, &mut buf)?;
        if st != 200 {
            return Err(format!("probe request got {st}"));
        }
        lat.push(due.elapsed().as_micros() as u64);
    }
    if let Some(path) = &a.series {
        let mut out = String::with_capacity(lat.len() * 16);
        for (i, l) in lat.iter().enumerate() {
            let offset = (period * i as u32).as_micros();
            out.push_str(&format!("{offset} {l}\n"));
        }
        std::fs::write(path, out).map_err(|e| format!("--series {path}: {e}"))?;
    }
    let side_ms = match side {
        Some(h) => Some(h.join().map_err(|_| "side thread panicked")??),
        None => None,
    };
    lat.sort_unstable();
    println!(
        "{{\"count\":{},\"p50_us\":{},\"p90_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"side_ms\":{}}}",
        lat.len(),
        pct(&lat, 0.5),
        pct(&lat, 0.9),
        pct(&lat, 0.99),
        pct(&lat, 0.999),
        lat.last().copied().unwrap_or(0),
        side_ms.map_or("null".to_string(), |v| format!("{v:.3}"))
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("probe: {e}");
        std::process::exit(1);
    }
}
