//! `ternforge serve`: endpoints, OpenAI bodies, streaming, stop strings, limits and errors,
//! against the real binary on an ephemeral loopback port.

mod serve_util;

use serde_json::{json, Value};
use serve_util::{Server, Sse};

fn assert_error(r: &serve_util::Response, status: u16, code: &str) -> String {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "error content-type: {:?}",
        r.headers
    );
    let v = r.json();
    let e = &v["error"];
    assert_eq!(e["code"], code, "{v}");
    assert!(e["type"].is_string(), "{v}");
    let msg = e["message"].as_str().expect("message").to_string();
    assert!(!msg.is_empty());
    msg
}

fn completion(s: &Server, body: Value) -> Value {
    let r = s.post_json("/v1/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

fn text_of(v: &Value) -> String {
    v["choices"][0]["text"].as_str().expect("text").to_string()
}

#[test]
fn health_models_metrics() {
    let s = Server::start(&[]);
    let h = s.get("/health");
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok");
    assert_eq!(h.json()["ready"], true);
    let r = s.get("/health/ready");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");

    let m = s.get("/v1/models").json();
    assert_eq!(m["object"], "list");
    assert_eq!(m["data"][0]["object"], "model");
    assert!(m["data"][0]["id"].is_string());

    let metrics = s.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/plain")));
    for name in [
        "ternforge_requests_total",
        "ternforge_tokens_generated_total",
        "ternforge_tokens_per_second_ema",
        "ternforge_queue_depth",
        "ternforge_in_flight",
    ] {
        assert!(
            metrics.body.contains(&format!("# TYPE {name} ")),
            "{name} missing:\n{}",
            metrics.body
        );
    }
    assert!(metrics
        .body
        .contains("ternforge_requests_total{endpoint=\"/health\",status=\"200\"} 1"));
    assert_eq!(s.metric("ternforge_ready"), 1.0);

    let nf = s.get("/nope");
    assert_error(&nf, 404, "not_found");
    let wrong = s.get("/v1/completions");
    assert_error(&wrong, 405, "method_not_allowed");
}

#[test]
fn completion_shape_usage_and_length() {
    let s = Server::start(&[]);
    let v = completion(
        &s,
        json!({"model": "x", "prompt": "Hello", "max_tokens": 7, "temperature": 0, "some_unknown_field": {"a": 1}}),
    );
    assert_eq!(v["object"], "text_completion");
    assert!(v["id"].as_str().unwrap().starts_with("cmpl-"));
    assert!(v["created"].as_u64().unwrap() > 1_600_000_000);
    assert!(v["model"].is_string());
    assert_eq!(v["choices"][0]["index"], 0);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    let u = &v["usage"];
    assert_eq!(u["completion_tokens"], 7);
    let p = u["prompt_tokens"].as_u64().unwrap();
    assert!(p >= 1);
    assert_eq!(u["total_tokens"].as_u64().unwrap(), p + 7);
    assert!(!text_of(&v).is_empty());
    assert!(s.metric("ternforge_tokens_generated_total") >= 7.0);
    assert!(s.metric("ternforge_tokens_per_second_last") > 0.0);
}

#[test]
fn greedy_is_deterministic_and_stream_matches() {
    let s = Server::start(&[]);
    let body = json!({"prompt": "Once upon", "max_tokens": 12, "temperature": 0});
    let a = text_of(&completion(&s, body.clone()));
    let b = text_of(&completion(&s, body.clone()));
    assert_eq!(a, b);

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let mut sse = Sse::open(s.addr, "/v1/completions", &stream_body);
    assert_eq!(sse.status, 200);
    assert!(
        sse.headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                && v.starts_with("text/event-stream"))
    );
    let events = sse.collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("chunk JSON"))
        .collect();
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    let id = chunks[0]["id"].clone();
    for c in &chunks {
        assert_eq!(c["object"], "text_completion");
        assert_eq!(c["id"], id);
        if let Some(ch) = c["choices"].as_array().and_then(|a| a.first()) {
            text.push_str(ch["text"].as_str().unwrap());
            if !ch["finish_reason"].is_null() {
                finish = Some(ch["finish_reason"].as_str().unwrap().to_string());
            }
        }
        if !c["usage"].is_null() {
            usage = Some(c["usage"].clone());
        }
    }
    assert_eq!(text, a);
    assert_eq!(finish.as_deref(), Some("length"));
    assert_eq!(usage.expect("usage chunk")["completion_tokens"], 12);
}

#[test]
fn chat_completion_and_chat_stream() {
    let s = Server::start(&[]);
    let body = json!({
        "model": "whatever",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
        ],
        "max_tokens": 6,
        "temperature": 0
    });
    let r = s.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    let content = msg["content"].as_str().unwrap().to_string();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 6);

    let mut sb = body.clone();
    sb["stream"] = json!(true);
    let mut sse = Sse::open(s.addr, "/v1/chat/completions", &sb);
    assert_eq!(sse.status, 200);
    let events = sse.collect();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(t) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
    }
    assert_eq!(text, content);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "length");
    assert_eq!(last["choices"][0]["delta"], json!({}));
}

#[test]
fn stop_strings_end_generation() {
    let s = Server::start(&[]);
    let base = json!({"prompt": "abc", "max_tokens": 40, "temperature": 0});
    let full = text_of(&completion(&s, base.clone()));
    assert!(full.chars().count() >= 10, "need some text: {full:?}");
    // A stop string taken from the middle of the greedy output.
    let chars: Vec<char> = full.chars().collect();
    let stop: String = chars[5..8].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];

    for stop_field in [json!(stop.clone()), json!(["\u{1F600}never", stop.clone()])] {
        let mut b = base.clone();
        b["stop"] = stop_field;
        let v = completion(&s, b.clone());
        assert_eq!(text_of(&v), expected);
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
        assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 40);

        // Streaming never leaks any part of the stop string.
        b["stream"] = json!(true);
        let mut sse = Sse::open(s.addr, "/v1/completions", &b);
        let events = sse.collect();
        let mut text = String::new();
        let mut finish = String::new();
        for e in &events[..events.len() - 1] {
            let c: Value = serde_json::from_str(e).unwrap();
            text.push_str(c["choices"][0]["text"].as_str().unwrap());
            if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
                finish = f.to_string();
            }
        }
        assert_eq!(text, expected);
        assert_eq!(finish, "stop");
    }
}

#[test]
fn bad_requests_are_json_errors() {
    let s = Server::start(&["--max-tokens-limit", "100", "--max-body", "65536"]);
    // Malformed JSON.
    let m = assert_error(
        &s.post("/v1/completions", "{\"prompt\": "),
        400,
        "invalid_json",
    );
    assert!(m.contains("JSON"), "{m}");
    assert_error(&s.post("/v1/chat/completions", "[1,2"), 400, "invalid_json");
    // Wrong types.
    assert_error(
        &s.post_json(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": "many"}),
        ),
        400,
        "invalid_json",
    );
    assert_error(
        &s.post_json("/v1/completions", &json!({"max_tokens": 3})),
        400,
        "invalid_prompt",
    );
    assert_error(
        &s.post_json("/v1/chat/completions", &json!({"messages": []})),
        400,
        "invalid_messages",
    );
    // Ranges.
    let m = assert_error(
        &s.post_json(
            "/v1/completions",
            &json!({"prompt": "a", "max_tokens": 101}),
        ),
        400,
        "invalid_value",
    );
    assert!(m.contains("100"), "{m}");
    for bad in [
        json!({"prompt": "a", "temperature": -1}),
        json!({"prompt": "a", "top_p": 1.5}),
        json!({"prompt": "a", "top_k": -2}),
        json!({"prompt": "a", "repetition_penalty": 0}),
        json!({"prompt": "a", "n": 3}),
    ] {
        assert_error(&s.post_json("/v1/completions", &bad), 400, "invalid_value");
    }
    // Body size limit.
    let big = format!("{{\"prompt\": \"{}\"}}", "a".repeat(70_000));
    let m = assert_error(&s.post("/v1/completions", &big), 413, "request_too_large");
    assert!(m.contains("65536"), "{m}");
    // The server is still fine afterwards.
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn context_limits() {
    let s = Server::start(&["--max-body", "2000000"]);
    // A prompt longer than the context.
    let long = "hello world ".repeat(20_000);
    let m = assert_error(
        &s.post_json("/v1/completions", &json!({"prompt": long, "max_tokens": 1})),
        400,
        "context_length_exceeded",
    );
    assert!(m.contains("context"), "{m}");
    // prompt + max_tokens over the context.
    let m = assert_error(
        &s.post_json(
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4000}),
        ),
        400,
        "context_length_exceeded",
    );
    assert!(m.contains("max_tokens"), "{m}");
    // Streaming requests are refused the same way, before any event.
    let mut sse = Sse::open(
        s.addr,
        "/v1/completions",
        &json!({"prompt": long, "stream": true}),
    );
    assert_eq!(sse.status, 400);
    assert!(sse.body.contains("context_length_exceeded"), "{}", sse.body);
    assert!(sse.next_data().is_none());
}

#[test]
fn unusable_model_is_a_clear_error() {
    let run = |model: &std::path::Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ternforge"))
            .args(["serve", "--port", "0", "--model"])
            .arg(model)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run ternforge serve");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let dir = std::env::temp_dir().join(format!("ternforge-serve-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let missing = run(&dir.join("missing.gguf"));
    assert!(missing.contains("not found"), "{missing}");
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"this is not a gguf file").unwrap();
    let err = run(&garbage);
    assert!(err.contains("garbage.gguf"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sampling_params_reach_the_sampler() {
    let s = Server::start(&[]);
    let ask = |extra: Value| {
        let mut b = json!({"prompt": "Sampling", "max_tokens": 24});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let v = completion(&s, b);
        let u = v["usage"]["completion_tokens"].as_u64().unwrap();
        (text_of(&v), u)
    };
    let greedy = ask(json!({"temperature": 0}));
    // top_k = 1 (extension) makes sampling at any temperature greedy.
    assert_eq!(
        ask(json!({"temperature": 1.5, "top_k": 1, "seed": 9})),
        greedy
    );
    // A seed makes sampling reproducible; different seeds give different samples.
    let a = ask(json!({"temperature": 1.0, "seed": 42}));
    assert_eq!(ask(json!({"temperature": 1.0, "seed": 42})), a);
    let others: Vec<_> = (1..4)
        .map(|seed| ask(json!({"temperature": 1.0, "seed": seed})))
        .collect();
    assert!(others.iter().any(|o| *o != a), "seeds ignored: {a:?}");
    // A strong repetition penalty (extension) changes the greedy continuation.
    let penalized = ask(json!({"temperature": 0, "repetition_penalty": 50.0}));
    assert_ne!(penalized, greedy);
}
