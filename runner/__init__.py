"""adamrun: reproduce AdamW, super-convergence and pruned-BERT-on-CPU results on your own data and hardware.

Garbage collection and large imports: an import makes objects that live as long as the process, yet the
interpreter runs full collections as the heap grows, each walking all of it: importing torch, torch._dynamo,
pandas and matplotlib cost 0.8 s of them per process here, and a sweep pays that in its own process and in
every worker. So the large imports go through `import_frozen`, and adamrun's processes skip the last
collections at exit.
"""

import atexit
import functools
import gc
import importlib
import sys
from types import ModuleType


def import_frozen(name: str) -> ModuleType:
    """`import name` with the collector paused, then its objects frozen (later collections skip them). The
    first time only: freezing also exempts what else lives at that moment (a few composed configs; at the
    first optimizer, that run's objects), so whatever of it later becomes cyclic garbage stays, once per
    process; what is freed by reference counting (tensors, modules) is freed as ever."""
    if name in sys.modules:
        return importlib.import_module(name)  # waits for another thread's import still under way
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        module = importlib.import_module(name)
    finally:
        if was_enabled:
            gc.enable()
    gc.freeze()
    return module


@functools.cache  # once per process
def skip_final_collections() -> None:
    """At exit, the interpreter's last collections walk the heap again: about a second with torch loaded, in
    the command's process and in each sweep worker it waits for. Called by the processes adamrun starts or
    runs trials in (not on import: a user's script keeps its finalizers), none of which leaves anything to a
    finalizer: every file is closed where it is written; exit handlers still run."""
    atexit.register(gc.freeze)
