"""Child side of ``helpers/hostile.py``: import maeprobe once, then fork one limited child per case.

Serves requests until stdin closes: each is one line of JSON on stdin, ``{"cases": [...], "budget_mb": N,
"network_log": path, "env": {...}}``, answered by one line of JSON on stdout (the list of results). Each child
starts from ``env`` (the request's environment: its home, caches and offline settings) plus its case's ``env``.
Run as a script (``python hostile_runner.py``) by one test process, never imported by the tests."""
from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sys
import tempfile

NETWORK_LOG = {"path": os.devnull}  # the current request's log (a child inherits it when forked)


def _block_network() -> None:
    """Refuse every connection that leaves the machine. Local (AF_UNIX) sockets stay open: a DataLoader worker hands
    its batches' shared memory to the parent through multiprocessing's resource sharer, which connects over one."""
    def refuse(*args, **kwargs):
        with open(NETWORK_LOG["path"], "a") as f:
            f.write(f"{os.getpid()} {args[:2]!r}\n")
        raise OSError("network access attempted in a hostile-input test")

    local_connect, local_connect_ex = socket.socket.connect, socket.socket.connect_ex

    def connect(self, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return local_connect(self, *args, **kwargs)
        return refuse(self, *args)

    def connect_ex(self, *args, **kwargs):
        if self.family == socket.AF_UNIX:
            return local_connect_ex(self, *args, **kwargs)
        return refuse(self, *args)

    socket.socket.connect = connect
    socket.socket.connect_ex = connect_ex
    socket.create_connection = refuse
    socket.getaddrinfo = refuse


def _vm_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _child(case: dict, env: dict, budget_mb: int, out_path: str, err_path: str) -> None:
    out = os.open(out_path, os.O_WRONLY)
    err = os.open(err_path, os.O_WRONLY)
    os.dup2(out, 1)
    os.dup2(err, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.chdir(case["cwd"])
    os.environ.clear()
    os.environ.update(env)
    os.environ.update(case["env"])
    limit = (_vm_kb("VmSize") + budget_mb * 1024) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.alarm(int(case["timeout"]))
    code = 1
    try:
        from maeprobe.cli import main

        sys.argv = ["maeprobe", *case["argv"]]
        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(request: dict) -> list[dict]:
    NETWORK_LOG["path"] = request["network_log"]
    results = []
    for case in request["cases"]:
        with tempfile.NamedTemporaryFile(delete=False) as o, tempfile.NamedTemporaryFile(delete=False) as e:
            out_path, err_path = o.name, e.name
        network_before = os.path.getsize(request["network_log"]) if os.path.exists(request["network_log"]) else 0
        baseline_kb = _vm_kb("VmRSS")
        pid = os.fork()
        if pid == 0:
            _child(case, request["env"], request["budget_mb"], out_path, err_path)
        _, status, usage = os.wait4(pid, 0)
        hung = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGALRM
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        with open(out_path, errors="replace") as f:
            stdout = f.read()
        with open(err_path, errors="replace") as f:
            stderr = f.read()
        os.unlink(out_path)
        os.unlink(err_path)
        network_after = os.path.getsize(request["network_log"]) if os.path.exists(request["network_log"]) else 0
        # ru_maxrss of wait4 is the child's own peak, which starts from the runner's resident memory (fork)
        results.append({"code": code, "stdout": stdout, "stderr": stderr, "hung": hung,
                        "network": network_after > network_before,
                        "extra_mb": max(0.0, (usage.ru_maxrss - baseline_kb) / 1024)})
    return results


def main() -> None:
    _block_network()
    import importlib

    # warm imports: every child starts from here, so a case costs its own work, not maeprobe's import time
    for module in ("torch", "maeprobe.cli", "maeprobe.checkpoints", "maeprobe.api", "maeprobe.probe", "maeprobe.plots",
                   "maeprobe.train.config", "maeprobe.train.engine", "maeprobe.findings", "pandas", "timm",
                   "safetensors.torch", "matplotlib.pyplot", "torchvision.transforms.v2"):
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    for line in sys.stdin:
        if line.strip():
            print(json.dumps(_serve(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()
