//! A small blocking HTTP/1.1 client for the API: what `ferry query`,
//! `ferry status` and `ferry tail` use to read the running daemon (redb lets
//! one process open the store, so the CLI goes through the API).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// The largest answer read: a whole page of `/api/v1/devices` or a query at
/// `[api] max_points` is a few MiB at most, so more is not an API's answer.
pub const MAX_ANSWER_BYTES: usize = 64 << 20;

/// How long a whole answer may take, in read timeouts: a peer that sends a
/// byte now and then does not hold the command forever.
const ANSWER_TIMEOUTS: u32 = 3;

/// Where the API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct Client {
    /// `host:port`.
    pub authority: String,
    pub token: Option<String>,
    pub timeout: Duration,
}

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Client {
    /// `http://host:port` or `host:port`.
    pub fn new(url: &str, token: Option<String>) -> Result<Client, String> {
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if url.starts_with("https://") {
            return Err(format!(
                "{url}: the API speaks plain HTTP (put a TLS proxy in front of it)"
            ));
        }
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(format!("{url}: expected http://HOST:PORT"));
        }
        Ok(Client {
            authority,
            token,
            timeout: Duration::from_secs(10),
        })
    }

    /// `GET path` (with its query string).
    pub fn get(&self, path: &str) -> Result<Response, String> {
        let fail =
            |e: std::io::Error| format!("cannot reach the Ferry API at {}: {e}", self.authority);
        let addr = self
            .authority
            .to_socket_addrs()
            .map_err(fail)?
            .next()
            .ok_or_else(|| format!("{}: no address", self.authority))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout).map_err(fail)?;
        stream.set_read_timeout(Some(self.timeout)).map_err(fail)?;
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\nConnection: close\r\n",
            self.authority
        );
        if let Some(t) = &self.token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).map_err(fail)?;
        let raw = self.read_answer(&mut stream)?;
        parse(&raw)
    }

    /// Reads until the peer closes: at most [`MAX_ANSWER_BYTES`], within
    /// [`ANSWER_TIMEOUTS`] times the timeout.
    fn read_answer(&self, stream: &mut TcpStream) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + self.timeout * ANSWER_TIMEOUTS;
        let mut raw = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!(
                    "the Ferry API at {} did not finish its answer within {:?}",
                    self.authority,
                    self.timeout * ANSWER_TIMEOUTS
                ));
            }
            stream
                .set_read_timeout(Some(left.min(self.timeout)))
                .map_err(|e| e.to_string())?;
            let n = match stream.read(&mut chunk) {
                Ok(0) => return Ok(raw),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(format!(
                        "cannot read the Ferry API's answer at {}: {e}",
                        self.authority
                    ))
                }
            };
            if raw.len() + n > MAX_ANSWER_BYTES {
                return Err(format!(
                    "the Ferry API's answer at {} is larger than {} MiB; ask for less",
                    self.authority,
                    MAX_ANSWER_BYTES >> 20
                ));
            }
            raw.extend_from_slice(&chunk[..n]);
        }
    }
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the API's answer has no end of headers")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("the API's answer has no status")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    if chunked {
        body = dechunk(&body).ok_or("the API's chunked answer is malformed")?;
    }
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A peer on 127.0.0.1:0 that reads the request, then runs `answer`.
    fn peer(answer: impl FnOnce(TcpStream) + Send + 'static) -> Client {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = s.read(&mut req);
            answer(s);
        });
        let mut c = Client::new(&format!("http://{addr}"), None).unwrap();
        c.timeout = Duration::from_millis(300);
        c
    }

    #[test]
    fn an_endless_answer_is_cut_at_the_cap() {
        let c = peer(|mut s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            let block = vec![b'x'; 1 << 20];
            while s.write_all(&block).is_ok() {}
        });
        let e = c.get("/api/v1/devices").unwrap_err();
        assert!(e.contains("is larger than 64 MiB"), "{e}");
    }

    #[test]
    fn a_dripping_answer_ends_at_the_deadline() {
        let c = peer(|mut s| {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n");
            // A byte every 100 ms: never a read timeout, never an end.
            while s.write_all(b"x").is_ok() {
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let e = c.get("/api/v1/devices").unwrap_err();
        assert!(e.contains("did not finish its answer within 900ms"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn plain_and_chunked_answers() {
        let r = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        let r = parse(b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            .unwrap();
        assert_eq!((r.status, r.body.as_str()), (400, "abcde"));
        assert!(Client::new("https://x:1", None).is_err());
        assert_eq!(
            Client::new("http://127.0.0.1:9109/", None)
                .unwrap()
                .authority,
            "127.0.0.1:9109"
        );
    }
}
