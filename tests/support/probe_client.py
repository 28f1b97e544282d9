"""A raw control client for tests that must run as another uid (started with subprocess's `user=`).

Reads a JSON list of exchanges on stdin, each {"tcp": port} (with "host", 127.0.0.1 by default) or
{"unix": path}, "send": base64
bytes, "replies": how many replies to wait for, "close_wait": seconds to wait after them for the
daemon to close the connection (default 0: do not wait); prints a JSON list of results, each {"replies":
[the bytes of each reply, as text], "closed": whether the daemon closed the connection after
them, "error": why the connection failed, or null}. Standard library only, no project imports:
it is run as another uid, which may not be able to import from (or even enter) the checkout: the
tests pass its source with `python3 -c`.
"""
import base64
import json
import socket
import sys

TIMEOUT = 10.0


def exchange(spec: dict) -> dict:
    result = {"replies": [], "closed": False, "error": None}
    try:
        if "unix" in spec:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(TIMEOUT)
            sock.connect(spec["unix"])
        else:
            sock = socket.create_connection((spec.get("host", "127.0.0.1"), spec["tcp"]), timeout=TIMEOUT)
    except OSError as exc:
        result["error"] = exc.strerror or str(exc)
        return result
    with sock:
        buffer = b""
        try:
            sock.sendall(base64.b64decode(spec["send"]))
            while buffer.count(b";;") < spec["replies"]:
                chunk = sock.recv(65536)
                if not chunk:
                    result["closed"] = True
                    break
                buffer += chunk
            if not result["closed"] and spec.get("close_wait"):
                sock.settimeout(spec["close_wait"])
                try:
                    result["closed"] = sock.recv(65536) == b""
                except socket.timeout:
                    pass
        except ConnectionResetError:
            result["closed"] = True
        except OSError as exc:
            result["error"] = exc.strerror or str(exc)
        result["replies"] = [part.decode("latin-1") + ";;" for part in buffer.split(b";;")[:-1]]
    return result


if __name__ == "__main__":
    print(json.dumps([exchange(spec) for spec in json.load(sys.stdin)]))
