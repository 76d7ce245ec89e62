"""A server with a fixed pool of worker threads, as thread-pool app servers are: one acceptor
thread reads each request and queues it; WORKERS threads take requests from the queue, each
"works" for a base time plus an exponential part (a sleep, so the GIL is free) and answers. A
request waits in the queue while every worker is busy, so queueing shows in the server's own
span (read of the request to write of the answer). Usage: pool_app.py PORT WORKERS BASE_MS EXP_MS
"""
import queue
import random
import socket
import sys
import threading
import time

port, workers, base_ms, exp_ms = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
jobs = queue.Queue()
BODY = b"ok\n"
ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\n" + BODY


def worker():
    while True:
        conn = jobs.get()
        try:
            time.sleep((base_ms + random.expovariate(1.0 / exp_ms)) / 1000.0)
            conn.sendall(ANSWER)
        except OSError:
            pass
        finally:
            conn.close()


for _ in range(workers):
    threading.Thread(target=worker, daemon=True).start()

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", port))
listener.listen(1024)
while True:
    conn, _ = listener.accept()
    try:
        conn.settimeout(5)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
        if data:
            jobs.put(conn)
        else:
            conn.close()
    except OSError:
        conn.close()
