//! Test helpers for `ternforge serve`: start the real binary on an ephemeral loopback port
//! and talk plain HTTP/1.1 to it over std `TcpStream`s.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use ternforge::Format;
use ternforge_engine::synth::{synthesize, Shape};

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
}

/// The engine's synthesized tiny model (2 layers, byte-level vocabulary, context 512),
/// synthesized by the engine API into the temp directory.
pub fn tiny_model() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        // Shared by every test binary and run: same bytes each time (fixed seed); written
        // to a private name first so a concurrent reader never sees half a file.
        let dir = std::env::temp_dir().join("ternforge-serve-tests");
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tiny-i2s-seed7.gguf");
        let bytes = synthesize(Shape::TINY, Format::I2S, 7).expect("synthesize tiny model");
        if std::fs::read(&path).ok().as_deref() != Some(&bytes[..]) {
            let tmp = dir.join(format!("tiny-{}.tmp", std::process::id()));
            std::fs::write(&tmp, &bytes).expect("write tiny model");
            std::fs::rename(&tmp, &path).expect("rename tiny model");
        }
        path
    })
    .clone()
}

/// Arguments that select the model of the tests.
pub fn model_args() -> Vec<String> {
    vec![
        "--model".into(),
        tiny_model().to_string_lossy().into_owned(),
    ]
}

impl Server {
    /// Starts `ternforge serve --port 0 <model> <extra>` and waits for `/health/ready`.
    pub fn start(extra: &[&str]) -> Server {
        let s = Server::spawn(extra);
        s.wait_ready(Duration::from_secs(60));
        s
    }

    /// Starts the server without waiting for the model.
    pub fn spawn(extra: &[&str]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ternforge"));
        cmd.args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(model_args())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("spawn ternforge serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read listen line");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from serve: {line:?}"));
        Server { child, addr }
    }

    pub fn wait_ready(&self, limit: Duration) {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = try_request(self.addr, "GET", "/health/ready", None) {
                if r.status == 200 {
                    return;
                }
            }
            assert!(t0.elapsed() < limit, "server not ready after {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, None)
    }

    pub fn post(&self, path: &str, body: &str) -> Response {
        request(self.addr, "POST", path, Some(body.as_bytes()))
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        self.post(path, &body.to_string())
    }

    /// Value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found in:\n{text}"))
    }

    /// Polls `cond` on the metrics until true or `limit` passes.
    pub fn wait_metric(&self, name: &str, limit: Duration, cond: impl Fn(f64) -> bool) -> f64 {
        let t0 = Instant::now();
        loop {
            let v = self.metric(name);
            if cond(v) {
                return v;
            }
            assert!(t0.elapsed() < limit, "metric {name} stuck at {v}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM (unix) and waits for the exit status.
    #[cfg(unix)]
    pub fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
        let t0 = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            assert!(t0.elapsed() < limit, "server did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.body))
    }
}

fn write_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    Ok(s)
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        r.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok((status, headers))
}

fn is_chunked(headers: &[(String, String)]) -> bool {
    headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked")
    })
}

/// Reads one chunk of a chunked body; `None` at the last chunk.
fn read_chunk(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    r.read_line(&mut line)?;
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| std::io::Error::other(format!("bad chunk size line {line:?}")))?;
    if size == 0 {
        return Ok(None);
    }
    let mut buf = vec![0; size + 2];
    r.read_exact(&mut buf)?;
    buf.truncate(size);
    Ok(Some(buf))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> std::io::Result<Response> {
    let s = write_request(addr, method, path, body)?;
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r)?;
    let mut body = Vec::new();
    if is_chunked(&headers) {
        while let Some(c) = read_chunk(&mut r)? {
            body.extend(c);
        }
    } else {
        r.read_to_end(&mut body)?;
    }
    Ok(Response {
        status,
        headers,
        body: String::from_utf8(body).map_err(std::io::Error::other)?,
    })
}

pub fn request(addr: SocketAddr, method: &str, path: &str, body: Option<&[u8]>) -> Response {
    try_request(addr, method, path, body).unwrap_or_else(|e| panic!("{method} {path} failed: {e}"))
}

/// An open server-sent-events response.
pub struct Sse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
    chunked: bool,
    /// A non-SSE body (error responses), read whole.
    pub body: String,
}

impl Sse {
    /// POSTs `body` to `path` and reads the response head.
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> Sse {
        let s =
            write_request(addr, "POST", path, Some(body.to_string().as_bytes())).expect("connect");
        let mut reader = BufReader::new(s);
        let (status, headers) = read_head(&mut reader).expect("response head");
        let chunked = is_chunked(&headers);
        let mut sse = Sse {
            status,
            headers,
            reader,
            buf: Vec::new(),
            chunked,
            body: String::new(),
        };
        if status != 200 {
            let mut b = Vec::new();
            if chunked {
                while let Some(c) = read_chunk(&mut sse.reader).expect("chunk") {
                    b.extend(c);
                }
            } else {
                sse.reader.read_to_end(&mut b).expect("body");
            }
            sse.body = String::from_utf8_lossy(&b).into_owned();
        }
        sse
    }

    /// The next `data:` payload (comments and keep-alives skipped); `None` at end of body.
    pub fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buf.windows(2).position(|w| w == b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..end + 2).collect();
                let event = String::from_utf8(raw).expect("utf-8 SSE event");
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if data.is_empty() {
                    continue; // comment / keep-alive
                }
                return Some(data.join("\n"));
            }
            let more = if self.chunked {
                read_chunk(&mut self.reader).ok().flatten()
            } else {
                let mut b = vec![0; 4096];
                match self.reader.read(&mut b) {
                    Ok(0) | Err(_) => None,
                    Ok(n) => {
                        b.truncate(n);
                        Some(b)
                    }
                }
            };
            match more {
                Some(b) => self.buf.extend(b),
                None => return None,
            }
        }
    }

    /// All remaining payloads up to the end of the body.
    pub fn collect(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.next_data()).collect()
    }
}
