#!/usr/bin/env python3
"""An independent implementation of multiconn's app protocol, written from issue 3's text
with the Python 3 standard library only, for interop tests in both directions:

    app_peer.py client HOST PORT ACTION VALUE [--repeat N]   (against multiconn-server)
    app_peer.py server HOST PORT [--connections N]           (for multiconn's app-client)

Wire format: 2 bytes big-endian header length, a UTF-8 JSON object header with
byteorder, content-type, content-encoding and content-length, then the content.
Every frame received is checked strictly; any deviation is an error and exit 1.
"""

import argparse
import json
import socket
import struct
import sys
import threading

IO_TIMEOUT = 20.0
REQUIRED_KEYS = ("byteorder", "content-type", "content-encoding", "content-length")
SEARCH = {
    "morpheus": "Follow the white rabbit. \U0001f430",
    "ring": "In the caves beneath the Misty Mountains. \U0001f48d",
    "\U0001f436": "\U0001f43e Playing ball! \U0001f3d0",
}


class ProtocolError(Exception):
    """The peer sent something the protocol does not allow."""


def encode_frame(content, content_type, content_encoding):
    header = {
        "byteorder": sys.byteorder,
        "content-type": content_type,
        "content-encoding": content_encoding,
        "content-length": len(content),
    }
    header_bytes = json.dumps(header, ensure_ascii=False).encode("utf-8")
    return struct.pack(">H", len(header_bytes)) + header_bytes + content


def encode_json(obj):
    return encode_frame(json.dumps(obj, ensure_ascii=False).encode("utf-8"), "text/json", "utf-8")


class Reader:
    """Buffered exact reads from a socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buffer = b""

    def read_exact(self, n, at_boundary=False):
        """n bytes; None if the peer closed cleanly before the first byte of a frame."""
        while len(self.buffer) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                if at_boundary and not self.buffer:
                    return None
                raise ProtocolError(f"connection closed after {len(self.buffer)} of {n} bytes")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read_frame(self):
        """(header, content) with content a dict for text/json, else bytes; None at EOF."""
        prefix = self.read_exact(2, at_boundary=True)
        if prefix is None:
            return None
        (header_len,) = struct.unpack(">H", prefix)
        if header_len == 0:
            raise ProtocolError("header length is 0")
        try:
            header = json.loads(self.read_exact(header_len).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ProtocolError(f"bad header: {e}") from None
        if not isinstance(header, dict):
            raise ProtocolError("header is not a JSON object")
        for key in REQUIRED_KEYS:
            if key not in header:
                raise ProtocolError(f'header is missing "{key}"')
        if header["byteorder"] not in ("little", "big"):
            raise ProtocolError(f"bad byteorder {header['byteorder']!r}")
        for key in ("content-type", "content-encoding"):
            if not isinstance(header[key], str):
                raise ProtocolError(f"{key} is not a string")
        length = header["content-length"]
        if isinstance(length, bool) or not isinstance(length, int) or length < 0:
            raise ProtocolError(f"bad content-length {length!r}")
        content = self.read_exact(length)
        if header["content-type"] == "text/json":
            if header["content-encoding"].lower() not in ("utf-8", "utf8"):
                raise ProtocolError(f"unsupported encoding {header['content-encoding']!r}")
            try:
                content = json.loads(content.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as e:
                raise ProtocolError(f"bad JSON content: {e}") from None
            if not isinstance(content, dict):
                raise ProtocolError("JSON content is not an object")
        return header, content


def text_of(value):
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def answer(request):
    action = request.get("action")
    if action == "search":
        query = request.get("value")
        found = SEARCH.get(query) if isinstance(query, str) else None
        return found or f"No match for '{text_of(query)}'."
    return f"Error: invalid action '{text_of(action)}'."


def make_request(action, value):
    if action == "search":
        return encode_json({"action": action, "value": value})
    return encode_frame((action + value).encode("utf-8"), "binary/custom-client-binary-type", "binary")


def describe_response(header, content):
    if header["content-type"] == "text/json":
        if "result" not in content:
            raise ProtocolError(f"JSON response without a result: {content!r}")
        return f"Got result: {text_of(content['result'])}"
    if header["content-type"] != "binary/custom-server-binary-type":
        raise ProtocolError(f"unexpected content-type {header['content-type']!r}")
    if header["content-encoding"] != "binary":
        raise ProtocolError(f"unexpected content-encoding {header['content-encoding']!r}")
    return f"Got response: {content!r}"


def run_client(args):
    with socket.create_connection((args.host, args.port), timeout=IO_TIMEOUT) as sock:
        # All requests in one write: the server must answer every one, in order.
        sock.sendall(make_request(args.action, args.value) * args.repeat)
        reader = Reader(sock)
        for _ in range(args.repeat):
            frame = reader.read_frame()
            if frame is None:
                raise ProtocolError("server closed the connection before answering")
            print(describe_response(*frame), flush=True)


def serve_connection(conn, failures):
    reader = Reader(conn)
    try:
        with conn:
            while True:
                try:
                    frame = reader.read_frame()
                except ProtocolError as e:
                    conn.sendall(encode_json({"error": str(e)}))
                    raise
                if frame is None:
                    return
                header, content = frame
                if header["content-type"] == "text/json":
                    conn.sendall(encode_json({"result": answer(content)}))
                else:
                    reply = b"First 10 bytes of request: " + content[:10]
                    conn.sendall(encode_frame(reply, "binary/custom-server-binary-type", "binary"))
    except (ProtocolError, OSError) as e:
        failures.append(str(e))


def run_server(args):
    failures = []
    with socket.create_server((args.host, args.port)) as listener:
        listener.settimeout(IO_TIMEOUT)
        print(f"listening on {listener.getsockname()[1]}", flush=True)
        threads = []
        for _ in range(args.connections):
            conn, _ = listener.accept()
            conn.settimeout(IO_TIMEOUT)
            thread = threading.Thread(target=serve_connection, args=(conn, failures))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
    if failures:
        raise ProtocolError("; ".join(failures))


def main():
    sys.stdout.reconfigure(encoding="utf-8")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    client = modes.add_parser("client")
    client.add_argument("host")
    client.add_argument("port", type=int)
    client.add_argument("action")
    client.add_argument("value")
    client.add_argument("--repeat", type=int, default=1)
    server = modes.add_parser("server")
    server.add_argument("host")
    server.add_argument("port", type=int)
    server.add_argument("--connections", type=int, default=1)
    args = parser.parse_args()
    try:
        run_client(args) if args.mode == "client" else run_server(args)
    except (ProtocolError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
