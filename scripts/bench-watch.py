#!/usr/bin/env python3
"""Load generator for scripts/bench-watch.sh: NODES simulated helpers post
signed statuses (as src/signing.rs signs them) to a running `cubeboot watch`
at RATE posts/s in total for SECONDS, over keep-alive connections, and
report the achieved rate and the round-trip latency percentiles. With a
seventh argument, a CA file, the posts go over HTTPS trusting it.

BENCH_SLOW=N (environment) adds a slowloris beside them: N connections
that each start a request and then send one byte a second, reconnecting
whenever watch closes one, so N stay open for the whole run (loopback
only; bounded by N and SECONDS)."""
import hashlib
import hmac
import http.client
import json
import multiprocessing
import os
import random
import socket
import ssl
import sys
import threading
import time


def connect(host, port, cafile):
    if cafile:
        ctx = ssl.create_default_context(cafile=cafile)
        return http.client.HTTPSConnection(host, int(port), timeout=10, context=ctx)
    return http.client.HTTPConnection(host, int(port), timeout=10)


def node_worker(addr, secret, names, rate_per_node, seconds, out, cafile):
    host, port = addr.rsplit(":", 1)
    lat = []
    codes = {}

    def one(name):
        conn = connect(host, port, cafile)
        period = 1.0 / rate_per_node
        # Spread the nodes over one period, as real helpers never post in step.
        start = time.monotonic() + random.random() * period
        n = 0
        while True:
            due = start + n * period
            now = time.monotonic()
            if due - start >= seconds:
                break
            if due > now:
                time.sleep(due - now)
            n += 1
            status = {
                "version": 1, "state": "running", "step": "fetch",
                "progress": {"done": 1, "total": 13}, "hostname": name,
                "role": "compute", "updated_at": int(time.time()), "seq": n,
                "download": {"asset": "bundle", "bytes": n * 1000, "total": 10**9},
            }
            body = json.dumps(status).encode()
            ts = str(int(time.time()))
            sig = hmac.new(secret, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
            headers = {"Content-Type": "application/json",
                       "X-Cubeboot-Timestamp": ts,
                       "X-Cubeboot-Signature": "sha256=" + sig}
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/", body, headers)
                resp = conn.getresponse()
                resp.read()
                code = resp.status
            except Exception as e:  # noqa: BLE001 - counted, reconnect
                code = type(e).__name__
                conn.close()
                conn = connect(host, port, cafile)
            lat.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1

    threads = [threading.Thread(target=one, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put((lat, codes))


def slowloris(host, port, count, seconds, out):
    """Hold `count` unfinished requests open for `seconds`, one byte a second."""
    def opened():
        s = socket.create_connection((host, int(port)), timeout=5)
        s.setblocking(False)
        s.send(b"POST /cubeboot HTTP/1.1\r\nHost: slow\r\nContent-Length: 100\r\n")
        return s

    conns, reopened, failed = [], 0, 0
    for _ in range(count):
        try:
            conns.append(opened())
        except OSError:
            failed += 1
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for i, s in enumerate(conns):
            try:
                if s.recv(256) == b"":
                    raise ConnectionError("closed by watch")
            except BlockingIOError:
                pass
            except OSError:
                s.close()
                try:
                    conns[i] = opened()
                    reopened += 1
                except OSError:
                    failed += 1
                continue
            try:
                s.send(b"X")
            except OSError:
                pass
        time.sleep(1)
    for s in conns:
        s.close()
    out.put((count, reopened, failed))


def main():
    addr, secret_file, nodes, rate, seconds, procs = sys.argv[1:7]
    cafile = sys.argv[7] if len(sys.argv) > 7 else None
    secret = open(secret_file, "rb").read().strip()
    nodes, rate, seconds, procs = int(nodes), float(rate), float(seconds), int(procs)
    names = [f"bench-{i:04d}" for i in range(nodes)]
    out = multiprocessing.Queue()
    slow_n = int(os.environ.get("BENCH_SLOW", "0"))
    slow_out = multiprocessing.Queue()
    slow = None
    if slow_n:
        host, port = addr.rsplit(":", 1)
        slow = multiprocessing.Process(target=slowloris, args=(host, port, slow_n, seconds + 2, slow_out))
        slow.start()
        # Let the slow connections open before the timed posts begin.
        time.sleep(min(10.0, 1 + slow_n / 500))
    workers = []
    t0 = time.monotonic()
    for p in range(procs):
        w = multiprocessing.Process(target=node_worker, args=(
            addr, secret, names[p::procs], rate / nodes, seconds, out, cafile))
        w.start()
        workers.append(w)
    lat, codes = [], {}
    for _ in workers:
        l, c = out.get()
        lat += l
        for k, v in c.items():
            codes[k] = codes.get(k, 0) + v
    for w in workers:
        w.join()
    wall = time.monotonic() - t0
    lat.sort()
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    print(f"posts: {len(lat)} in {wall:.1f} s = {len(lat) / wall:.0f}/s from {nodes} nodes; "
          f"answers: {codes}")
    print(f"round trip ms: p50 {pct(0.50):.2f}  p90 {pct(0.90):.2f}  "
          f"p99 {pct(0.99):.2f}  max {lat[-1] * 1000:.2f}")
    if slow:
        held, reopened, failed = slow_out.get()
        slow.join()
        print(f"slowloris: {held} connections held open, {reopened} reopened after watch "
              f"closed them, {failed} connects failed")


if __name__ == "__main__":
    main()
