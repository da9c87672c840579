"""A pre-forking replay server: imports a script's heavy modules once, then forks one child per segment.

Run by path (never imported from the flor_lib package): flor_lib must be imported fresh in each child,
after the segment's environment is set, exactly as in a new process. Protocol on the socket given as
argv[1]: requests are one JSON message each (SOCK_SEQPACKET), a `run` request carries the child's output pipe as an fd;
replies likewise.
"""

import atexit
import importlib
import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import sys
import threading
import types

LOCAL_ROOTS: list[str] = []


def _is_local(name: str) -> bool:
    # a module of the user's repo or worktree differs per code version: never shared across segments
    top = name.split(".")[0]
    if top in ("flor_lib", "flordb", "__main__", "__future__"):
        return True
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return True
    origin = getattr(spec, "origin", None) if spec else None
    locs = list(getattr(spec, "submodule_search_locations", None) or []) if spec else []
    paths = [p for p in [origin, *locs] if p and p not in ("built-in", "frozen")]
    return spec is None or any(os.path.abspath(p).startswith(root) for p in paths for root in LOCAL_ROOTS)


def preimport(names: list[str]) -> dict:
    """Import each non-local module; report what was imported and what failed."""
    done, failed = [], []
    for name in names:
        if name in sys.modules:
            continue
        if _is_local(name):
            continue
        try:
            importlib.import_module(name)
            done.append(name)
        except BaseException as exc:  # a module that fails here is imported (and fails) in the child
            failed.append(f"{name}: {type(exc).__name__}")
    return {"imported": done, "failed": failed, "threads": threading.active_count(),
            "flor_loaded": "flor_lib" in sys.modules}


def _reseed() -> None:
    # a fresh process draws fresh entropy: children of one fork must not share RNG states
    import random

    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    if "torch" in sys.modules:
        sys.modules["torch"].seed()


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _drop_shadowed(folder: str) -> None:
    # a module next to the script wins over an installed one of the same name, as in a fresh process
    for top in {n.split(".")[0] for n in list(sys.modules)}:
        if top in sys.builtin_module_names or top in ("__main__", "sys"):
            continue
        # (a bare folder is only a namespace portion: an installed package found later still wins)
        if os.path.exists(os.path.join(folder, top + ".py")) or os.path.exists(os.path.join(folder, top,
                                                                                             "__init__.py")):
            for name in [n for n in list(sys.modules) if n == top or n.startswith(top + ".")]:
                del sys.modules[name]


def _child(req: dict, out_fd: int, sock: socket.socket) -> None:
    code = 1
    try:
        sock.close()
        os.setsid()  # the engine kills the child's whole process group on cancel
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        script = req["argv"][0]
        sys.argv = list(req["argv"])
        folder = os.path.dirname(os.path.abspath(script))
        sys.path.insert(0, folder)
        _drop_shadowed(folder)
        _reseed()
        code = _run_main(script)
        try:
            threading._shutdown()  # as at interpreter exit: wait for non-daemon threads, then atexit
        except Exception:
            pass
        atexit._run_exitfuncs()
        if req.get("modules_out"):
            with open(req["modules_out"], "w") as f:
                json.dump(sorted(n for n in list(sys.modules) if not n.startswith(("flor_lib", "__main__"))), f)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _run_main(script: str) -> int:
    """Run the script as __main__; its exit code."""
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__builtins__ = __builtins__
    main.__loader__ = importlib.machinery.SourceFileLoader("__main__", script)
    sys.modules["__main__"] = main
    try:
        with open(script, "rb") as f:
            source = f.read()
        exec(compile(source, script, "exec"), main.__dict__)
    except SystemExit as exc:
        return _exit_code(exc)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        return 1
    return 0


def serve(sock: socket.socket) -> None:
    """Answer requests (one SOCK_SEQPACKET message each) until the engine closes its end."""
    def reply(obj: dict) -> None:
        sock.send(json.dumps(obj).encode())

    while True:
        msg, fds, _, _ = socket.recv_fds(sock, 1 << 20, 1)
        if not msg:  # the engine is done (or gone): skip the slow teardown of torch and friends
            os._exit(0)
        req = json.loads(msg)
        if req["op"] == "import":
            reply(preimport(req["modules"]))
        elif req["op"] == "run":
            out_fd = fds[0]
            pid = os.fork()
            if pid == 0:
                _child(req, out_fd, sock)
            os.close(out_fd)
            reply({"pid": pid})
            _, status = os.waitpid(pid, 0)
            reply({"exit": os.waitstatus_to_exitcode(status)})


def main() -> None:
    sys.path.pop(0)  # this file's folder, which a fresh `python script.py` would not have
    fd, roots, modules = int(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    LOCAL_ROOTS.extend(os.path.abspath(r) for r in roots)
    sock = socket.socket(fileno=fd)
    sock.send(json.dumps(preimport(modules)).encode())
    serve(sock)


if __name__ == "__main__":
    main()
