#!/usr/bin/env python3
# A Warren plugin in Python: one JSON request per line on stdin, one JSON
# reply per line on stdout (docs/plugins.md). Served as /echo/echo,
# /echo/upcase and /echo/greet.
import json, os, sys

config = json.loads(os.environ.get("WARREN_PLUGIN_CONFIG", "{}"))

for line in sys.stdin:
    req = json.loads(line)
    method, params = req["method"], req["params"]
    if method == "echo":
        reply = {"result": params}
    elif method == "upcase" and isinstance(params, str):
        reply = {"result": params.upper()}
    elif method == "greet":
        reply = {"result": config.get("greeting", "hello") + ", " + str(params)}
    else:
        reply = {"error": {"code": "bad_request", "message": "cannot %s %r" % (method, params)}}
    reply["id"] = req["id"]
    print(json.dumps(reply), flush=True)
