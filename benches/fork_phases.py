"""Where a forked child's first request goes, and what a pool of pre-forked
children (Android's zygote keeps one) would save. No proxy: this process is
the fork server (the same warm SDK server as benches/warm.py, prepared as
ringmux_fork prepares it: config loaded, anyio's backend pre-imported,
gc.freeze, huge-page heap), and each round hands a fresh listening socket to

  fork       a child forked at hand-over (what `ringmux serve --fork` does)
  pool       a child forked earlier, its event loop running, waiting for the
             socket (uvicorn then runs the app's lifespan and serves)
  pool-warm  the same, with the lifespan already started before hand-over

and times hand-over -> the full answer to an MCP `initialize`, then reads the
child's page faults and private memory (USS). Rounds alternate the modes.

  .venv/bin/python benches/fork_phases.py [--rounds 10] [--warm-mib 200]
"""

import argparse
import asyncio
import gc
import http.client
import json
import os
import socket
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INIT = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                              "clientInfo": {"name": "b", "version": "1"}}})


def child_stats(pid):
    with open(f"/proc/{pid}/stat") as f:
        faults = int(f.read().rsplit(")", 1)[1].split()[7])
    with open(f"/proc/{pid}/smaps_rollup") as f:
        uss = sum(int(x.split()[1]) for x in f if x.startswith(("Private_Clean", "Private_Dirty")))
    return faults, uss


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--warm-mib", default="200")
    a = ap.parse_args()
    os.environ["FORK_CHILD_WARM_MIB"] = a.warm_mib
    sys.path.insert(0, os.path.join(ROOT, "tests/py/children"))
    import anyio._backends._asyncio  # noqa: F401  (as ringmux_fork does)
    import fork_child
    import uvicorn
    import uvicorn.server  # noqa: F401
    from ringmux_fork import hugepages

    cfg = uvicorn.Config(fork_child.app, log_level="warning", access_log=False, lifespan="auto")
    cfg.load()
    gc.collect()
    gc.freeze()
    hugepages.collapse_heap()

    class Pooled(uvicorn.Server):
        """Serves the socket that arrives on `chan`; with `warm`, runs the
        lifespan first (uvicorn's own startup with no sockets), then adds the
        socket the way uvicorn's startup does."""

        def __init__(self, chan, warm):
            super().__init__(cfg)
            self.chan, self.warm = chan, warm

        async def startup(self, sockets=None):
            loop = asyncio.get_running_loop()
            if self.warm:
                await super().startup(sockets=[])
            ready = loop.create_future()
            loop.add_reader(self.chan.fileno(), lambda: ready.done() or ready.set_result(None))
            await ready
            loop.remove_reader(self.chan.fileno())
            _, fds, _, _ = socket.recv_fds(self.chan, 16, 1)
            sock = socket.socket(fileno=fds[0])
            if not self.warm:
                return await super().startup(sockets=[sock])

            def proto(_loop=None):
                return cfg.http_protocol_class(config=cfg, server_state=self.server_state,
                                               app_state=self.lifespan.state, _loop=_loop)

            self.servers.append(await loop.create_server(proto, sock=sock, backlog=cfg.backlog))

    def serve_forked(sock):
        pid = os.fork()
        if pid == 0:
            try:
                uvicorn.Server(cfg).run(sockets=[sock])
            finally:
                os._exit(0)
        return pid

    def pooled(warm):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                Pooled(theirs, warm).run()
            finally:
                os._exit(0)
        theirs.close()
        time.sleep(0.3)  # it is ready long before a rollout arrives
        return pid, ours

    res = {m: [] for m in ("fork", "pool", "pool-warm")}
    for rnd in range(a.rounds):
        modes = list(res)
        modes = modes[rnd % 3:] + modes[:rnd % 3]
        for mode in modes:
            chan = None
            if mode != "fork":
                pid, chan = pooled(mode == "pool-warm")
            s = socket.socket()
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(128)
            port = s.getsockname()[1]
            t0 = time.perf_counter()
            if mode == "fork":
                pid = serve_forked(s)
            else:
                socket.send_fds(chan, [b"s"], [s.fileno()])
            s.close()
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("POST", "/mcp", body=INIT, headers={"content-type": "application/json",
                                                          "accept": "application/json, text/event-stream"})
            r = c.getresponse()
            r.read()
            ms = (time.perf_counter() - t0) * 1000
            assert r.status == 200, r.status
            faults, uss = child_stats(pid)
            res[mode].append((ms, faults, uss))
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            if chan:
                chan.close()
    print(f"hand-over -> first answer, medians of {a.rounds} rounds ({a.warm_mib} MiB warm state):")
    for mode, rows in res.items():
        ms = [x[0] for x in rows]
        print(f"  {mode:9s} {statistics.median(ms):5.1f} ms (range {min(ms):.1f}-{max(ms):.1f}), "
              f"child faults {statistics.median(x[1] for x in rows):.0f}, "
              f"USS {statistics.median(x[2] for x in rows) / 1024:.1f} MiB")


if __name__ == "__main__":
    main()
