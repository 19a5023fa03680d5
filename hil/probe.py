"""What the harness runs on a device (``python -c <this file> COMMAND ...``): standard
library only, Python 3.9+, no edgeops import, so it works wherever the agent does.

Commands (each prints one JSON object):

* ``state PORT STATE_DIR``: the agent's ``GET /state`` and ``GET /healthz`` on
  127.0.0.1:PORT, and its outbox (messages waiting, ``dropped.json``);
* ``predict PORT N BATCH``: ``N`` predictions through ``POST /predict``, ``BATCH``
  rows a call, cycling through the rows read as a JSON list from stdin; prints how
  many were answered and the model that answered.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request


def _call(port, path, body=None, timeout=10.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        headers={"Content-Type": "application/json"} if data else {},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read() or b"null")
        except ValueError:
            return exc.code, None
    except (OSError, ValueError) as exc:
        return 0, {"error": str(exc)}


def state(port, state_dir):
    out = {}
    out["state_status"], out["state"] = _call(port, "/state")
    out["healthz_status"], out["healthz"] = _call(port, "/healthz")
    box = os.path.join(state_dir, "outbox")
    try:
        out["outbox"] = len([n for n in os.listdir(box) if n.endswith(".msg")])
    except OSError:
        out["outbox"] = 0
    try:
        with open(os.path.join(box, "dropped.json")) as f:
            out["dropped"] = int(json.load(f).get("dropped", 0))
    except (OSError, ValueError, AttributeError):
        out["dropped"] = 0
    return out


def predict(port, n, batch, rows):
    made, errors, model, started = 0, [], None, time.time()
    i = 0
    while made < n:
        k = min(batch, n - made)
        chunk = [rows[(i + j) % len(rows)] for j in range(k)]
        i += k
        status, body = _call(port, "/predict", {"rows": chunk}, timeout=30.0)
        if status != 200:
            errors.append({"status": status, "body": body})
            if len(errors) >= 5:
                break
            time.sleep(0.5)
            i -= k
            continue
        made += len(body["predictions"])
        model = body.get("model")
    return {
        "predictions": made,
        "errors": errors,
        "model": model,
        "seconds": round(time.time() - started, 3),
    }


def main(argv):
    command = argv[0] if argv else ""
    if command == "state" and len(argv) == 3:
        result = state(int(argv[1]), argv[2])
    elif command == "predict" and len(argv) == 4:
        rows = json.load(sys.stdin)
        result = predict(int(argv[1]), int(argv[2]), int(argv[3]), rows)
    else:
        print(json.dumps({"error": "usage: state PORT STATE_DIR | predict PORT N BATCH"}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
