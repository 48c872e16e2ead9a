//! `ternforge serve`: bounded queue (429), client disconnect cancels its generation,
//! `/health` latency during generation, graceful shutdown.

mod serve_util;

use serde_json::{json, Value};
use serve_util::{Server, Sse};
use std::io::Write;
use std::time::{Duration, Instant};

fn long_stream(s: &Server, max_tokens: u64) -> Sse {
    let sse = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": "count", "max_tokens": max_tokens, "stream": true, "temperature": 0}),
    );
    assert_eq!(sse.status, 200, "{}", sse.body);
    sse
}

#[test]
fn full_queue_answers_429_and_frees_up() {
    let s = Server::start(&[
        "--parallel",
        "1",
        "--queue",
        "1",
        "--token-interval-ms",
        "50",
    ]);
    let mut a = long_stream(&s, 100);
    assert!(a.next_data().is_some());
    s.wait_metric("ternforge_in_flight", Duration::from_secs(10), |v| v == 1.0);
    let b = long_stream(&s, 100);
    s.wait_metric("ternforge_queue_depth", Duration::from_secs(10), |v| {
        v == 1.0
    });

    let r = s.post_json("/v1/completions", &json!({"prompt": "x", "max_tokens": 4}));
    assert_eq!(r.status, 429, "{}", r.body);
    let e = r.json();
    assert_eq!(e["error"]["code"], "queue_full");
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert!(e["error"]["message"].as_str().unwrap().contains("queue"));
    let mut c = Sse::open(
        s.addr,
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "x"}], "stream": true}),
    );
    assert_eq!(c.status, 429);
    assert!(c.next_data().is_none());
    assert_eq!(s.metric("ternforge_rejected_queue_full_total"), 2.0);
    let metrics = s.get("/metrics").body;
    assert!(
        metrics.contains("ternforge_requests_total{endpoint=\"/v1/completions\",status=\"429\"} 1"),
        "{metrics}"
    );

    // Dropping both clients cancels both jobs; the server then takes new work.
    drop(a);
    drop(b);
    s.wait_metric("ternforge_in_flight", Duration::from_secs(10), |v| v == 0.0);
    s.wait_metric("ternforge_queue_depth", Duration::from_secs(10), |v| {
        v == 0.0
    });
    let r = s.post_json("/v1/completions", &json!({"prompt": "x", "max_tokens": 3}));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn disconnect_cancels_generation() {
    // 100 tokens at >= 100 ms each would take 10 s.
    let s = Server::start(&["--parallel", "1", "--token-interval-ms", "100"]);
    let mut sse = long_stream(&s, 100);
    for _ in 0..3 {
        let d = sse.next_data().expect("event");
        assert_ne!(d, "[DONE]");
    }
    assert_eq!(s.metric("ternforge_in_flight"), 1.0);
    let t0 = Instant::now();
    drop(sse);
    s.wait_metric("ternforge_in_flight", Duration::from_secs(5), |v| v == 0.0);
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert!(s.metric("ternforge_cancelled_total") >= 1.0);
    let generated = s.metric("ternforge_tokens_generated_total");
    assert!(
        generated < 60.0,
        "generation was not cut short: {generated} tokens"
    );

    // A non-streaming request whose client hangs up is cancelled as well.
    let body = json!({"prompt": "count", "max_tokens": 100}).to_string();
    let mut raw = std::net::TcpStream::connect(s.addr).unwrap();
    write!(
        raw,
        "POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    s.wait_metric("ternforge_in_flight", Duration::from_secs(5), |v| v == 1.0);
    drop(raw);
    s.wait_metric("ternforge_in_flight", Duration::from_secs(5), |v| v == 0.0);
    assert!(s.metric("ternforge_cancelled_total") >= 2.0);
    assert!(s.metric("ternforge_tokens_generated_total") < 120.0);
}

#[test]
fn health_stays_fast_during_generation() {
    let s = Server::start(&["--parallel", "2"]);
    let workers: Vec<_> = (0..2)
        .map(|_| {
            let addr = s.addr;
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut n = 0;
                while t0.elapsed() < Duration::from_secs(2) {
                    let r = serve_util::request(
                        addr,
                        "POST",
                        "/v1/completions",
                        Some(
                            json!({"prompt": "go", "max_tokens": 200})
                                .to_string()
                                .as_bytes(),
                        ),
                    );
                    assert_eq!(r.status, 200, "{}", r.body);
                    n += 1;
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut lat = Vec::new();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(1500) {
        let t = Instant::now();
        let r = s.get("/health");
        lat.push(t.elapsed());
        assert_eq!(r.status, 200);
        std::thread::sleep(Duration::from_millis(5));
    }
    let generations: usize = workers.into_iter().map(|w| w.join().unwrap()).sum();
    assert!(generations >= 2);
    lat.sort();
    let p50 = lat[lat.len() / 2];
    let max = *lat.last().unwrap();
    eprintln!(
        "/health latency under load: n={} p50={p50:?} max={max:?}",
        lat.len()
    );
    assert!(p50 < Duration::from_millis(10), "p50 {p50:?}");
    assert!(max < Duration::from_millis(500), "max {max:?}");
}

#[cfg(unix)]
#[test]
fn sigterm_finishes_in_flight_then_exits() {
    let mut s = Server::start(&[
        "--parallel",
        "1",
        "--token-interval-ms",
        "20",
        "--shutdown-timeout",
        "10",
    ]);
    let mut sse = long_stream(&s, 40);
    assert!(sse.next_data().is_some());
    let addr = s.addr;
    let reader = std::thread::spawn(move || {
        let rest = sse.collect();
        assert_eq!(rest.last().map(String::as_str), Some("[DONE]"), "{rest:?}");
        let last: Value = serde_json::from_str(&rest[rest.len() - 2]).unwrap();
        last["choices"][0]["finish_reason"]
            .as_str()
            .unwrap()
            .to_string()
    });
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let status = s.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    // The 40-token generation (~0.8 s) ran to its end rather than being cut.
    assert_eq!(reader.join().unwrap(), "length");
    assert!(t0.elapsed() < Duration::from_secs(8));
    // Nothing listens any more.
    assert!(std::net::TcpStream::connect(addr).is_err());
}

#[cfg(unix)]
#[test]
fn sigterm_cancels_what_outlives_the_timeout() {
    let mut s = Server::start(&[
        "--parallel",
        "1",
        "--token-interval-ms",
        "100",
        "--shutdown-timeout",
        "0.5",
    ]);
    let mut sse = long_stream(&s, 100);
    assert!(sse.next_data().is_some());
    let reader = std::thread::spawn(move || sse.collect());
    // A second request waits in the queue behind the first.
    let addr = s.addr;
    let queued = std::thread::spawn(move || {
        serve_util::request(
            addr,
            "POST",
            "/v1/completions",
            Some(
                json!({"prompt": "q", "max_tokens": 50})
                    .to_string()
                    .as_bytes(),
            ),
        )
    });
    s.wait_metric("ternforge_queue_depth", Duration::from_secs(10), |v| {
        v == 1.0
    });
    let t0 = Instant::now();
    let status = s.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let rest = reader.join().unwrap();
    assert!(rest.len() < 60, "generation was not cancelled: {rest:?}");
    assert_eq!(rest.last().map(String::as_str), Some("[DONE]"));
    let q = queued.join().unwrap();
    assert_eq!(q.status, 503, "{}", q.body);
    assert_eq!(q.json()["error"]["code"], "cancelled");
}
