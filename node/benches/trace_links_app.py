# The chain's server for trace_links.py: the same app as node/tests/traces.rs.
import sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

downstream = int(sys.argv[2]) if len(sys.argv) > 2 else None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        if downstream is not None:
            n = self.path.rsplit("/", 1)[-1]
            with urllib.request.urlopen(f"http://127.0.0.1:{downstream}/back/{n}") as answer:
                body = answer.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
