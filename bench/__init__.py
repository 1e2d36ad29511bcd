"""bench: benchmarks that print a table and a last line `RESULT name=... key=value ...`, measuring against a
baseline run in the same process or run. `python -m bench` runs them all; `python -m bench.NAME` one."""
