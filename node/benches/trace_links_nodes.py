"""Connected traces across two nodes (docs/benchmarks.md#connected-traces): joined fraction,
wrong links, and the kernel time per request with and without propagation.

Two network namespaces on a bridge, each with its own `apiary node` (probes on, scoped to its
namespace). Links: server A (threaded Python, in A's namespace) calls server B (in B's) for
each request; clients in this script (root namespace, untraced; one connection per request,
8 and 64 at once) call A. The link checked is the one between the nodes, B's server span under
A's client span (the context went in the TCP header option); A's client span under A's server
span (the thread) is counted too. Cost: wrk in A's namespace against nginx in B's (keep-alive,
`-c8`, 5 s), both traced; kernel time is the kernel's BPF run-time statistics (the node turns
them on): both nodes' http programs (`/v1/probes`) plus every `trace_sock_ops` program
(`bpftool prog show`), less what they ran in an idle window of the same length just before
(other processes on the host hit the same tracepoints), per request wrk made. Rounds alternate
propagation on and off (`--no-trace-propagation`), each with fresh nodes.

usage: python3 trace_links_nodes.py APIARY_BINARY [--requests 800] [--rounds 2]
(as root; needs iproute2, bpftool, nginx, wrk and python3)
"""
import argparse, http.client, json, os, shutil, signal, subprocess, sys, tempfile, threading, time, urllib.request

APP = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "trace_links_app.py")).read()
NET = "10.197.0"
NAMESPACES = ["aptl-a", "aptl-b"]
BRIDGE = "aptlbr"


def sh(*args, check=True):
    return subprocess.run(args, check=check, capture_output=True, text=True).stdout


def setup_network():
    teardown_network()
    sh("ip", "link", "add", BRIDGE, "type", "bridge")
    sh("ip", "addr", "add", f"{NET}.254/24", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")
    for i, ns in enumerate(NAMESPACES):
        outer = f"aptlv{i}"
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", outer, "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", outer, "master", BRIDGE)
        sh("ip", "link", "set", outer, "up")
        sh("ip", "-n", ns, "addr", "add", f"{NET}.{i + 1}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")


def teardown_network():
    for i, ns in enumerate(NAMESPACES):
        sh("ip", "netns", "del", ns, check=False)
        # A process left in a namespace keeps it, and its veth pair, alive.
        sh("ip", "link", "del", f"aptlv{i}", check=False)
    sh("ip", "link", "del", BRIDGE, check=False)


def api(ip, token, path, body=None, method="GET"):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{ip}:7700{path}", data=data, method=method,
                                 headers={"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(req, timeout=10))


class Node:
    def __init__(self, binary, i, root, propagate):
        self.ip = f"{NET}.{i + 1}"
        self.dir = os.path.join(root, f"n{i}")
        args = ["ip", "netns", "exec", NAMESPACES[i], binary, "node", "--name", f"n{i}", "--data-dir", self.dir,
                "--listen", f"{self.ip}:7701", "--api", f"{self.ip}:7700", "--otlp-http", f"{self.ip}:4318",
                "--otlp-grpc", f"{self.ip}:4317", "--scope", f"netns:{NAMESPACES[i]}"]
        if not propagate:
            args.append("--no-trace-propagation")
        self.log = open(self.dir + ".log", "w")
        self.child = subprocess.Popen(args, stdout=self.log, stderr=self.log, start_new_session=True)
        self.token = None

    def wait_ready(self):
        for _ in range(1800):
            try:
                if self.token is None:
                    self.token = open(os.path.join(self.dir, "api-token")).read().strip()
                http = [p for p in api(self.ip, self.token, "/v1/probes") if p["name"] == "http"][0]
                if http["state"] == "attached":
                    # Tuning off: it would lower sampling under this load.
                    api(self.ip, self.token, "/v1/config", method="PATCH", body={"changes": [
                        {"key": "budget.cpu_percent_per_node", "value": 100},
                        {"key": "budget.export_events_per_second", "value": 1000000000}], "comment": "bench"})
                    return
            except (OSError, ValueError, IndexError):
                pass
            time.sleep(0.1)
        raise SystemExit(f"node {self.ip} did not start: see {self.dir}.log")

    def http_runtime(self):
        http = [p for p in api(self.ip, self.token, "/v1/probes") if p["name"] == "http"][0]
        return http["run_time_ns"]

    def stop(self):
        os.killpg(self.child.pid, signal.SIGTERM)
        self.child.wait()


def sock_ops_runtime():
    progs = json.loads(sh("bpftool", "prog", "show", "--json"))
    return sum(p.get("run_time_ns", 0) for p in progs if p.get("name") == "trace_sock_ops")


def kernel_ns(nodes):
    """(both nodes' http programs, the sock_ops programs) run time so far, ns."""
    return sum(n.http_runtime() for n in nodes), sock_ops_runtime()


NGINX_CONF = """daemon off; pid {dir}/nginx.pid; error_log {dir}/error.log; worker_processes 1;
events {{ worker_connections 256; }}
http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir};
  uwsgi_temp_path {dir}; scgi_temp_path {dir};
  server {{ listen {ip}:8081; location / {{ return 200 "ok"; }} }} }}
"""


def start_nginx(ns, ip, root):
    d = tempfile.mkdtemp(dir=root)
    conf = os.path.join(d, "nginx.conf")
    open(conf, "w").write(NGINX_CONF.format(dir=d, ip=ip))
    child = subprocess.Popen(["ip", "netns", "exec", ns, "nginx", "-c", conf], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            http.client.HTTPConnection(ip, 8081, timeout=1).connect()
            return child
        except OSError:
            time.sleep(0.05)
    raise SystemExit("nginx did not start")


def cost(nodes, seconds=5):
    """Kernel ns per request of wrk -> nginx across the nodes, less an idle window's."""
    idle = kernel_ns(nodes)
    time.sleep(seconds)
    start = kernel_ns(nodes)
    out = sh("ip", "netns", "exec", NAMESPACES[0], "wrk", "-t1", "-c8", f"-d{seconds}s",
             f"http://{NET}.2:8081/")
    end = kernel_ns(nodes)
    requests = int(out.split(" requests in ")[0].split()[-1])
    net = [(end[k] - start[k]) - (start[k] - idle[k]) for k in range(2)]
    return requests, net[0] / requests, net[1] / requests


def start_app(ns, listen, downstream=None):
    args = ["ip", "netns", "exec", ns, sys.executable, "-c", APP, listen] + ([downstream] if downstream else [])
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    host, port = listen.split(":")
    for _ in range(200):
        try:
            http.client.HTTPConnection(host, int(port), timeout=1).connect()
            return child
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"app on {listen} did not start")


def run_load(host, port, ids, clients):
    pending = list(ids)
    lock = threading.Lock()

    def client():
        while True:
            with lock:
                if not pending:
                    return
                n = pending.pop()
            c = http.client.HTTPConnection(host, port, timeout=30)
            c.request("GET", f"/front/{n}")
            c.getresponse().read()
            c.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def spans_of(node):
    by = {}
    for s in api(node.ip, node.token, "/v1/spans?limit=4096"):
        target = s.get("target", "")
        if target.startswith("/front/") or target.startswith("/back/"):
            by[(target, s.get("kind"))] = s.get("trace") or {}
    return by


def measure(nodes, clients, first, requests):
    ids = range(first, first + requests)
    run_load(nodes[0].ip, 8080, ids, clients)
    time.sleep(1.5)
    a, b = spans_of(nodes[0]), spans_of(nodes[1])
    remote = thread = wrong = missing = 0
    for n in ids:
        a_server, a_client = a.get((f"/front/{n}", "server")), a.get((f"/back/{n}", "client"))
        b_server = b.get((f"/back/{n}", "server"))
        if a_server is None or a_client is None or b_server is None:
            missing += 1
            continue
        for parent, child, how in [(a_server, a_client, "thread"), (a_client, b_server, "remote")]:
            if child.get("parent_span_id") is None:
                continue
            if child["parent_span_id"] == parent["span_id"] and child["trace_id"] == parent["trace_id"] \
                    and child.get("link") == how:
                if how == "remote":
                    remote += 1
                else:
                    thread += 1
            else:
                wrong += 1
    return remote, thread, wrong, missing


def main():
    p = argparse.ArgumentParser()
    p.add_argument("binary")
    p.add_argument("--requests", type=int, default=800)
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    if os.geteuid() != 0 or not shutil.which("bpftool"):
        raise SystemExit("needs root and bpftool")
    setup_network()
    root = tempfile.mkdtemp(prefix="apiary-trace-links-")
    first = 100000
    links, costs = [], []
    try:
        for _ in range(a.rounds):
            for propagate in (True, False):
                run_root = tempfile.mkdtemp(dir=root)
                nodes = [Node(a.binary, i, run_root, propagate) for i in range(2)]
                apps = []
                try:
                    for n in nodes:
                        n.wait_ready()
                    apps = [start_app(NAMESPACES[1], f"{NET}.2:8080"),
                            start_app(NAMESPACES[0], f"{NET}.1:8080", f"{NET}.2:8080")]
                    for clients in (8, 64):
                        remote, thread, wrong, missing = measure(nodes, clients, first, a.requests)
                        first += a.requests
                        done = a.requests - missing
                        links.append(f"| {'on' if propagate else 'off'} | {clients} | {a.requests} | "
                                     f"{remote}/{done} ({100.0 * remote / max(done, 1):.1f} %) | "
                                     f"{thread}/{done} | {wrong} | {missing} |")
                        print(links[-1], flush=True)
                    apps.append(start_nginx(NAMESPACES[1], f"{NET}.2", run_root))
                    requests, http_ns, sock_ops_ns = cost(nodes)
                    costs.append(f"| {'on' if propagate else 'off'} | {requests} | {http_ns:.0f} | "
                                 f"{sock_ops_ns:.0f} | {http_ns + sock_ops_ns:.0f} |")
                    print(costs[-1], flush=True)
                finally:
                    for app in apps:
                        app.kill()
                    for n in nodes:
                        n.stop()
    finally:
        teardown_network()
        shutil.rmtree(root, ignore_errors=True)
    print("\n| propagation | clients | requests | B's server span under A's client span (remote) | "
          "A's client under A's server (thread) | wrong links | requests with a span missing |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(links))
    print("\n| propagation | wrk requests (5 s, -c8) | http programs, ns/request | sock_ops, ns/request | "
          "total, ns/request |")
    print("|---|---|---|---|---|")
    print("\n".join(costs))


main()
