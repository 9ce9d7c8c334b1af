# A test plugin: crash crashes the worker in the middle of a call (once
# per marker file, so that the retry-free daemon's next call succeeds);
# sleep takes a while; pid says which worker answered; env reads a variable.
import json, os, sys, time

for line in sys.stdin:
    req = json.loads(line)
    m, p = req["method"], req["params"]
    if m == "crash":
        sys.stderr.write("crashing in the middle of call %s\n" % req["id"])
        sys.stderr.flush()
        os._exit(3)
    elif m == "sleep":
        time.sleep(p)
        out = {"result": p}
    elif m == "pid":
        out = {"result": os.getpid()}
    elif m == "env":
        out = {"result": os.environ.get(p)}
    elif m == "garbage":
        print("<html>not json</html>", flush=True)
        continue
    else:
        out = {"result": p}
    out["id"] = req["id"]
    print(json.dumps(out), flush=True)
