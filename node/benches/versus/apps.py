"""The versus bench's Python services, both Flask (Werkzeug's threaded server, HTTP/1.1
keep-alive):

    apps.py front PORT DOWNSTREAM_PORT   GET / calls the downstream once, then answers
    apps.py downstream PORT              GET /item answers

Run bare, or under `opentelemetry-instrument` (the OpenTelemetry SDK's auto-instrumentation
of Flask and requests) for the traditional mode."""

import sys
import threading

import requests
from flask import Flask
from werkzeug.serving import WSGIRequestHandler

role, port = sys.argv[1], int(sys.argv[2])
app = Flask(role)

if role == "front":
    downstream = f"http://127.0.0.1:{sys.argv[3]}/item"
    # One keep-alive session per server thread: requests' sessions are not shared safely.
    local = threading.local()

    @app.get("/")
    def index():
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        answer = session.get(downstream, timeout=5)
        return f"front {answer.status_code} {answer.text}\n"

else:

    @app.get("/item")
    def item():
        return "item"


WSGIRequestHandler.protocol_version = "HTTP/1.1"
app.run(host="127.0.0.1", port=port, threaded=True)
