"""The chaos test: randomized, seeded, reproducible runs of calc v9 and v10 against a
scripted fake InfluxDB, with signals at random moments (see run.py for the invariant).

`python -m tests.chaos --seeds 1-200 --duration 6` (or `make chaos`) runs many seeds one
after the other; test_chaos.py runs a few fixed seeds inside the test suite.
"""
