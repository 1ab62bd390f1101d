"""adamrun: reproduce AdamW, super-convergence and pruned-BERT-on-CPU results on your own data and hardware.

Garbage collection and large imports: an import makes objects that live as long as the process, yet the
interpreter runs full collections as the heap grows, each walking all of it: importing torch, torch._dynamo,
pandas and matplotlib cost 0.8 s of them per process here, and a sweep pays that in its own process and in
every worker. So the large imports go through `import_frozen`, and the last collections at exit are skipped.
"""

import atexit
import gc
import importlib
import sys
from types import ModuleType


def import_frozen(name: str) -> ModuleType:
    """`import name` with the collector paused, then its objects frozen (later collections skip them). The
    first time only: freezing also keeps whatever cyclic garbage exists at that moment (a few composed
    configs), once."""
    if name in sys.modules:
        return sys.modules[name]
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(name)
    finally:
        gc.freeze()
        if was_enabled:
            gc.enable()


# At exit, the interpreter's last collections walk the heap again (about a second with torch loaded, in the
# parent and in each worker it waits for). Nothing is left to a finalizer: every file is closed where it is
# written; exit handlers still run and the memory goes back to the system.
atexit.register(gc.freeze)
