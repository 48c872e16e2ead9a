#!/usr/bin/env python3
"""Bounded load test for `ternforge serve` (python3 standard library only).

Runs N concurrent streaming /v1/completions against a server on the loopback interface
while polling /health, then prints requests ok/errors, aggregate tokens/s and the /health
latency p50/p99/max.

Either point it at a running server:
    scripts/loadtest.py --url http://127.0.0.1:8080
or let it start one (and stop it afterwards):
    scripts/loadtest.py --binary target/release/ternforge --model tiny.gguf -- --parallel 2

Everything is bounded: --requests in total, --concurrency at once, --duration wall-clock
seconds; only loopback addresses are accepted.
"""

import argparse
import http.client
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.parse


def is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def percentile(sorted_vals, q):
    if not sorted_vals:
        return float("nan")
    i = min(len(sorted_vals) - 1, max(0, int(round(q * (len(sorted_vals) - 1)))))
    return sorted_vals[i]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.errors = {}
        self.tokens = 0
        self.latencies = []
        self.ttft = []
        self.health = []
        self.health_errors = 0

    def error(self, kind):
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1


def stream_one(host, port, body, timeout, stats):
    """One streaming completion; returns completion tokens or raises."""
    t0 = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("POST", "/v1/completions", body=json.dumps(body),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            resp.read()
            stats.error("http %d" % resp.status)
            return
        first = None
        usage = None
        done = False
        for raw in resp:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                stats.error("stream error: %s" % chunk["error"].get("code"))
                return
            if first is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                first = time.monotonic() - t0
            if chunk.get("usage"):
                usage = chunk["usage"]
        if not done or usage is None:
            stats.error("truncated stream")
            return
        with stats.lock:
            stats.ok += 1
            stats.tokens += usage["completion_tokens"]
            stats.latencies.append(time.monotonic() - t0)
            if first is not None:
                stats.ttft.append(first)
    except (OSError, http.client.HTTPException, ValueError) as e:
        stats.error(type(e).__name__)
    finally:
        conn.close()


def poll_health(host, port, stop, interval, stats):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            conn = http.client.HTTPConnection(host, port, timeout=5)
            conn.request("GET", "/health")
            resp = conn.getresponse()
            resp.read()
            dt = time.monotonic() - t0
            conn.close()
            with stats.lock:
                if resp.status == 200:
                    stats.health.append(dt)
                else:
                    stats.health_errors += 1
        except (OSError, http.client.HTTPException):
            with stats.lock:
                stats.health_errors += 1
        stop.wait(interval)


def start_server(binary, model, extra):
    cmd = [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--model", model] + extra
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        sys.exit("server did not start: %r" % line)
    url = line.strip().split("http://", 1)[1]
    host, port = url.rsplit(":", 1)
    return proc, host, int(port)


def wait_ready(host, port, limit):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/health/ready")
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    sys.exit("server not ready after %.0fs" % limit)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8080", help="running server (loopback)")
    ap.add_argument("--binary", help="start this ternforge binary instead of using --url")
    ap.add_argument("--model", help="model file for --binary")
    ap.add_argument("--concurrency", type=int, default=8, help="streams at once (default 8)")
    ap.add_argument("--requests", type=int, default=64, help="total requests (default 64)")
    ap.add_argument("--duration", type=float, default=60.0, help="wall-clock cap, seconds")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt", default="The quick brown fox")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--health-interval", type=float, default=0.02, help="seconds between polls")
    ap.add_argument("server_args", nargs="*", help="extra `serve` arguments (after --)")
    a = ap.parse_args()
    if not (1 <= a.concurrency <= 256 and 1 <= a.requests <= 100000 and 0 < a.duration <= 3600):
        sys.exit("--concurrency 1..256, --requests 1..100000, --duration (0, 3600]")

    proc = None
    if a.binary:
        if not a.model:
            sys.exit("--binary needs --model")
        proc, host, port = start_server(a.binary, a.model, a.server_args)
    else:
        u = urllib.parse.urlparse(a.url)
        host, port = u.hostname, u.port or 80
    if not is_loopback(host):
        if proc:
            proc.kill()
        sys.exit("refusing non-loopback host %r" % host)

    try:
        wait_ready(host, port, 120)
        stats = Stats()
        stop = threading.Event()
        deadline = time.monotonic() + a.duration
        remaining = [a.requests]
        rem_lock = threading.Lock()
        body = {"prompt": a.prompt, "max_tokens": a.max_tokens, "temperature": a.temperature,
                "stream": True, "stream_options": {"include_usage": True}}

        def worker(i):
            seq = 0
            while time.monotonic() < deadline:
                with rem_lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                b = dict(body, seed=i * 100003 + seq)
                seq += 1
                stream_one(host, port, b, max(1.0, deadline - time.monotonic()), stats)

        health = threading.Thread(target=poll_health,
                                  args=(host, port, stop, a.health_interval, stats))
        health.start()
        t0 = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.monotonic() - t0
        stop.set()
        health.join()
    finally:
        if proc:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()

    lat = sorted(stats.latencies)
    hl = sorted(stats.health)
    errs = sum(stats.errors.values())
    print("requests: %d ok, %d errors %s (concurrency %d, wall %.2fs)"
          % (stats.ok, errs, dict(stats.errors) if errs else "", a.concurrency, wall))
    print("tokens: %d generated, %.1f tok/s aggregate" % (stats.tokens, stats.tokens / wall))
    if lat:
        print("request latency: p50 %.3fs p99 %.3fs max %.3fs"
              % (percentile(lat, 0.5), percentile(lat, 0.99), lat[-1]))
    if stats.ttft:
        tt = sorted(stats.ttft)
        print("time to first text: p50 %.3fs p99 %.3fs" % (percentile(tt, 0.5), percentile(tt, 0.99)))
    if hl:
        print("/health: %d polls, %d errors, latency p50 %.2fms p99 %.2fms max %.2fms"
              % (len(hl), stats.health_errors, percentile(hl, 0.5) * 1e3,
                 percentile(hl, 0.99) * 1e3, hl[-1] * 1e3))
    return 0 if errs == 0 and stats.health_errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
