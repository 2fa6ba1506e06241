"""sandcell's Python function runner: serves one function over HTTP on a Unix socket.

Started as root inside the function's sandbox: binds the socket the host reaches, hands it to
the function's user, drops to that user, then imports the handler once and answers one request
at a time, as OpenLambda's server does. `f(event)` gets the JSON body and its return value is
sent back as JSON; a module with an `app` (and no `f`) is served as WSGI (or ASGI when
`app.__call__` is a coroutine function) under SCRIPT_NAME /run/<name>.
"""
import asyncio
import http.server
import inspect
import io
import json
import os
import pwd
import socketserver
import sys
import traceback

SOCKET, CODE_DIR, ENTRY, NAME, USER = sys.argv[1:6]


def drop_privileges(user):
    entry = pwd.getpwnam(user)
    os.chown(SOCKET, entry.pw_uid, entry.pw_gid)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    os.environ["HOME"] = entry.pw_dir
    os.environ["USER"] = user


class Server(socketserver.UnixStreamServer):
    def server_bind(self):
        if os.path.exists(SOCKET):
            os.unlink(SOCKET)
        socketserver.UnixStreamServer.server_bind(self)


def error_body(code, message, details=None):
    body = {"error": {"code": code, "message": message}}
    if details is not None:
        body["error"]["details"] = details
    return json.dumps(body).encode()


def load_handler():
    sys.path.insert(0, CODE_DIR)
    os.chdir(CODE_DIR)
    module_name = ENTRY[:-3].replace("/", ".")
    module = __import__(module_name)
    for part in module_name.split(".")[1:]:
        module = getattr(module, part)
    if hasattr(module, "f"):
        return ("func", module.f)
    app = getattr(module, os.environ.get("OL_WSGI_ENTRY") or os.environ.get("OL_ASGI_ENTRY") or "app", None)
    if app is None:
        raise RuntimeError(ENTRY + " defines neither f(event) nor an app")
    call = app if inspect.isfunction(app) else getattr(app, "__call__", app)
    return ("asgi" if inspect.iscoroutinefunction(call) else "wsgi", app)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    kind = None
    target = None

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=(("Content-Type", "application/json"),)):
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def handle_any(self):
        raw = self.body()
        try:
            if self.kind == "func":
                self.run_func(raw)
            elif self.kind == "wsgi":
                self.run_wsgi(raw)
            else:
                self.run_asgi(raw)
        except Exception:
            self.reply(500, error_body("FUNCTION_ERROR", "the handler raised an exception",
                                       {"traceback": traceback.format_exc()}))

    def run_func(self, raw):
        try:
            event = json.loads(raw) if raw.strip() else {}
        except ValueError as err:
            self.reply(400, error_body("BAD_EVENT", "the request body is not JSON: " + str(err)))
            return
        result = self.target(event)
        try:
            body = json.dumps(result).encode()
        except (TypeError, ValueError) as err:
            self.reply(500, error_body("FUNCTION_ERROR", "the handler's result is not JSON: " + str(err)))
            return
        self.reply(200, body)

    def path_parts(self):
        path, _, query = self.path.partition("?")
        prefix = "/run/" + NAME
        rest = path[len(prefix):] if path.startswith(prefix) else path
        return prefix, rest or "/", query

    def run_wsgi(self, raw):
        prefix, rest, query = self.path_parts()
        environ = {
            "REQUEST_METHOD": self.command, "SCRIPT_NAME": prefix, "PATH_INFO": rest,
            "QUERY_STRING": query, "SERVER_NAME": "sandcell", "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(raw), "wsgi.errors": sys.stderr, "wsgi.multithread": False,
            "wsgi.multiprocess": False, "wsgi.run_once": False,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(raw)),
        }
        for key, value in self.headers.items():
            environ["HTTP_" + key.upper().replace("-", "_")] = value
        started = {}

        def start_response(status, headers, exc_info=None):
            started["status"] = int(status.split()[0])
            started["headers"] = headers
        chunks = self.target(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            if hasattr(chunks, "close"):
                chunks.close()
        headers = [(k, v) for k, v in started.get("headers", []) if k.lower() != "content-length"]
        self.reply(started.get("status", 500), body, headers)

    def run_asgi(self, raw):
        prefix, rest, query = self.path_parts()
        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": self.command, "scheme": "http", "path": prefix + rest, "root_path": prefix,
            "query_string": query.encode(), "server": ("sandcell", 80),
            "headers": [(k.lower().encode(), v.encode()) for k, v in self.headers.items()],
        }
        sent = {"status": 500, "headers": [], "body": b""}
        received = {"done": False}

        async def receive():
            if received["done"]:
                return {"type": "http.disconnect"}
            received["done"] = True
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                sent["headers"] = [(k.decode(), v.decode()) for k, v in message.get("headers", [])]
            elif message["type"] == "http.response.body":
                sent["body"] += message.get("body", b"")
        asyncio.run(self.target(scope, receive, send))
        headers = [(k, v) for k, v in sent["headers"] if k.lower() != "content-length"]
        self.reply(sent["status"], sent["body"], headers)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = handle_any


def main():
    server = Server(SOCKET, Handler)
    drop_privileges(USER)
    try:
        kind, target = load_handler()
        Handler.kind = kind
        # A plain function as a class attribute would become a method: keep it as it is.
        Handler.target = staticmethod(target)
    except BaseException:
        sys.stderr.write(traceback.format_exc())
        sys.stderr.flush()
        os._exit(3)
    print("ready", flush=True)
    server.serve_forever()


main()
