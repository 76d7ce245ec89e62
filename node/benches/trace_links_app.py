# The chain's server for trace_links.py and trace_links_nodes.py: the same app as
# node/tests/traces.rs. argv[1]: the port to listen on (127.0.0.1) or HOST:PORT; argv[2], if
# given: the downstream's port (on 127.0.0.1) or HOST:PORT, whose /back/N it fetches for each
# request on the handling thread.
import sys, urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def address(arg):
    host, _, port = arg.rpartition(":")
    return (host or "127.0.0.1", int(port))


downstream = "%s:%d" % address(sys.argv[2]) if len(sys.argv) > 2 else None

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"ok"
        if downstream is not None:
            n = self.path.rsplit("/", 1)[-1]
            with urllib.request.urlopen(f"http://{downstream}/back/{n}") as answer:
                body = answer.read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(address(sys.argv[1]), Handler).serve_forever()
