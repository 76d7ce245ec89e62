"""Joined fraction and wrong links of connected traces under concurrency (docs/benchmarks.md).

Runs curl-like clients (Python http.client, one connection per request) against the chain
client -> threaded server A -> threaded server B on one node, `--clients` at once, each request
with its own id, then reads the node's /v1/spans and checks every link of every request:
A's server span under the client's span, A's client span under A's server span, B's server span
under A's client span. Prints one row: clients, requests, links joined, wrong, missing spans.

usage: python3 trace_links.py API_URL TOKEN --clients 64 --requests 800
(the node must run with probes, as root; the chain is started here on free ports)
"""
import argparse, http.client, json, socket, subprocess, sys, threading, time, urllib.request

APP = open(__file__.replace("trace_links.py", "trace_links_app.py")).read()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start(port, downstream=None):
    args = [sys.executable, "-c", APP, str(port)] + ([str(downstream)] if downstream else [])
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return child
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"app on {port} did not start")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("api")
    p.add_argument("token")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--first-id", type=int, default=100000)
    a = p.parse_args()
    front, back = free_port(), free_port()
    servers = [start(back), start(front, back)]
    ids = list(range(a.first_id, a.first_id + a.requests))
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if not ids:
                    return
                n = ids.pop()
            c = http.client.HTTPConnection("127.0.0.1", front, timeout=30)
            c.request("GET", f"/front/{n}")
            c.getresponse().read()
            c.close()

    threads = [threading.Thread(target=client) for _ in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(1.5)
    req = urllib.request.Request(a.api + "/v1/spans?limit=4096", headers={"Authorization": "Bearer " + a.token})
    spans = json.load(urllib.request.urlopen(req))
    for s in servers:
        s.kill()
    by = {}
    for s in spans:
        target, kind = s.get("target", ""), s.get("kind")
        ours = target.startswith("/back/") or str(front) in (s.get("local") or "") + (s.get("peer") or "")
        if ours:
            by[(target, kind)] = s.get("trace") or {}
    joined = wrong = missing = 0
    for n in range(a.first_id, a.first_id + a.requests):
        chain = [by.get((f"/front/{n}", "client")), by.get((f"/front/{n}", "server")),
                 by.get((f"/back/{n}", "client")), by.get((f"/back/{n}", "server"))]
        if any(c is None for c in chain):
            missing += 1
            continue
        for parent, child in zip(chain, chain[1:]):
            if child.get("parent_span_id") is None:
                continue
            if child["parent_span_id"] == parent["span_id"] and child["trace_id"] == parent["trace_id"]:
                joined += 1
            else:
                wrong += 1
    links = 3 * (a.requests - missing)
    print(f"| {a.clients} | {a.requests} | {joined}/{links} ({100.0 * joined / max(links, 1):.1f} %) | {wrong} | {missing} |")


main()
