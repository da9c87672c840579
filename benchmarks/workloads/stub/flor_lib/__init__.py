"""Pass-through stand-in for flor_lib: the plain-script baseline of the benchmarks.

On PYTHONPATH ahead of the real package, it makes a flor-instrumented script run as if flor were
not there: arg returns the command-line value (cast like flor does) or the default, log returns its
value, loop returns its iterable, checkpoints and commit do nothing.
"""

import sys

_cli = {}
_argv = sys.argv[1:]
_i = 0
while _i < len(_argv):
    _w = _argv[_i]
    if _w.startswith("--") and len(_w) > 2:
        _k = _w[2:]
        if "=" in _k:
            _k, _v = _k.split("=", 1)
        elif _i + 1 < len(_argv) and not _argv[_i + 1].startswith("--"):
            _v = _argv[_i + 1]
            _i += 1
        else:
            _v = "true"
        _cli[_k.replace("-", "_")] = _v
    _i += 1


def arg(name, default=None):
    if name not in _cli:
        return default
    text = _cli[name]
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes", "y", "on")
    if default is None:
        return text
    return type(default)(text)


def log(name, value):
    return value


def loop(name, iterable=None):
    return name if iterable is None else iterable


def checkpoints(*objs):
    pass


def commit():
    pass


MTK = sys.modules[__name__]
