# A test plugin speaking JSON lines: one method per behaviour the pool must
# survive.
import json, os, sys, time

for line in sys.stdin:
    req = json.loads(line)
    m, p = req["method"], req["params"]
    if m == "echo":
        out = {"id": req["id"], "result": p}
    elif m == "env":
        out = {"id": req["id"], "result": os.environ.get(p)}
    elif m == "pid":
        out = {"id": req["id"], "result": os.getpid()}
    elif m == "request":
        out = {"id": req["id"], "result": req}
    elif m == "fail":
        out = {"id": req["id"], "error": {"code": "bad_input", "message": "no: " + str(p)}}
    elif m == "crash":
        sys.stderr.write("crashing on purpose\n")
        sys.stderr.flush()
        os._exit(3)
    elif m == "garbage":
        sys.stdout.write("this is not json\n")
        sys.stdout.flush()
        continue
    elif m == "wrongid":
        out = {"id": "nope", "result": 1}
    elif m == "sleep":
        time.sleep(p)
        out = {"id": req["id"], "result": p}
    else:
        out = {"id": req["id"], "error": "no such method " + m}
    print(json.dumps(out), flush=True)
