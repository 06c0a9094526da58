//! Benchmark peer: a fast native HTTP/1.1 server (std only, one thread per connection) that is
//! both the upstream app and the Matomo stand-in.
//!
//!   bench-standin UPSTREAM_PORT MATOMO_PORT
//!
//! Upstream port: every request gets `200 ok`, counted as `served`.
//! Matomo port: `GET …?idsite=` counts one hit; `POST` counts the `?idsite=` hits of a bulk body
//! and answers like Matomo's bulk API. `GET /__stats` returns the counts as JSON and
//! `POST /__reset` zeroes them (neither is counted).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::thread;

static SERVED: AtomicU64 = AtomicU64::new(0);
static CALLS: AtomicU64 = AtomicU64::new(0);
static HITS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

fn count(hay: &[u8], needle: &[u8]) -> u64 {
    hay.windows(needle.len()).filter(|w| *w == needle).count() as u64
}

/// Reads one request: (request line, body). None at EOF or on a malformed request.
fn read_request(r: &mut BufReader<TcpStream>) -> Option<(String, Vec<u8>, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut length = 0usize;
    let mut chunked = false;
    let mut close = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            length = v.parse().ok()?;
        } else if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if k.eq_ignore_ascii_case("connection") && v.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..n]);
        }
    } else if length > 0 {
        body.resize(length, 0);
        r.read_exact(&mut body).ok()?;
    }
    Some((line, body, close))
}

/// What a web app's page answer carries besides its body (a session cookie, caching and
/// security headers), so the response-header reads are priced on real sizes.
const PAGE_HEADERS: &str = "content-type: text/html; charset=utf-8\r\n\
    cache-control: private, no-cache, no-store, must-revalidate\r\n\
    set-cookie: session=Fe26.2**0123456789abcdef0123456789abcdef; Path=/; HttpOnly; Secure; SameSite=Lax\r\n\
    strict-transport-security: max-age=63072000; includeSubDomains; preload\r\n\
    content-security-policy: default-src 'self'; img-src 'self' data:; script-src 'self'\r\n\
    x-content-type-options: nosniff\r\n\
    x-frame-options: DENY\r\n\
    referrer-policy: strict-origin-when-cross-origin\r\n\
    vary: Accept-Encoding, Cookie\r\n\
    x-request-id: 6f1e1f3c-2a7b-4c1e-9f0e-5d2b8a7c9e10\r\n";

fn respond(w: &mut TcpStream, status: &str, body: &str, page: bool) -> bool {
    let headers = if page {
        PAGE_HEADERS
    } else {
        "content-type: text/plain\r\n"
    };
    let msg = format!(
        "HTTP/1.1 {status}\r\n{headers}content-length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(msg.as_bytes()).is_ok()
}

fn serve(stream: TcpStream, matomo: bool) {
    let _ = stream.set_nodelay(true);
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    while let Some((line, body, close)) = read_request(&mut r) {
        let ok = if !matomo {
            SERVED.fetch_add(1, Relaxed);
            respond(&mut w, "200 OK", "<!doctype html><title>ok</title>\n", true)
        } else if line.starts_with("GET /__stats") {
            let s = format!(
                "{{\"served\":{},\"calls\":{},\"hits\":{},\"bytes\":{}}}",
                SERVED.load(Relaxed),
                CALLS.load(Relaxed),
                HITS.load(Relaxed),
                BYTES.load(Relaxed)
            );
            respond(&mut w, "200 OK", &s, false)
        } else if line.starts_with("POST /__reset") {
            for c in [&SERVED, &CALLS, &HITS, &BYTES] {
                c.store(0, Relaxed);
            }
            respond(&mut w, "200 OK", "{}", false)
        } else {
            CALLS.fetch_add(1, Relaxed);
            BYTES.fetch_add(body.len() as u64, Relaxed);
            let hits = if body.is_empty() {
                count(line.as_bytes(), b"idsite=").min(1)
            } else {
                count(&body, b"?idsite=")
            };
            HITS.fetch_add(hits, Relaxed);
            let answer = format!("{{\"status\":\"success\",\"tracked\":{hits},\"invalid\":0}}");
            respond(&mut w, "200 OK", &answer, false)
        };
        if !ok || close {
            break;
        }
    }
}

fn listen(port: &str, matomo: bool) -> thread::JoinHandle<()> {
    let listener = match TcpListener::bind(format!("127.0.0.1:{port}")) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bench-standin: cannot listen on {port}: {e}");
            std::process::exit(2);
        }
    };
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve(stream, matomo));
        }
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: bench-standin UPSTREAM_PORT MATOMO_PORT");
        std::process::exit(2);
    }
    let a = listen(&args[1], false);
    let _b = listen(&args[2], true);
    println!("ready");
    let _ = a.join();
}
