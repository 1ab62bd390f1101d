"""make bench: how fast each part of adamrun is, and why, on this machine; every figure against a baseline timed
in the same run. `adamrun bench` runs the sections named in bench.sections (bench/harness.py), one module each
with its own settings (conf/bench_<section>.yaml). A section that times one recipe names it in its module's
name and may import that recipe; nothing under runner/ imports this package but the CLI."""
