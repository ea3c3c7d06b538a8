"""statestore's benchmark: the same savepoints through statestore, its peers and the floor.

Run it from the repository root with ``python -m benchmarks.run`` (``--quick`` for a
seconds-long smoke run); ``docs/performance.md`` explains the workloads, the peers and
the results. The modules, in the order a reader needs them:

* :mod:`benchmarks.data`: the entity states every subject saves (the same objects);
* :mod:`benchmarks.subjects`: one small class per thing measured (statestore on each
  backend, LangGraph's savers, a pickled-blob SQLite table, the floor);
* :mod:`benchmarks.timing`: interleaved rounds, medians and per-round ratios;
* :mod:`benchmarks.workloads`: W1 to W4 and the engine overhead;
* :mod:`benchmarks.report`: the table, the PASS/MISS target lines, JSON and markdown;
* :mod:`benchmarks.plot`: the PNG.

Not collected by pytest: the suite lives in ``tests/`` (one smoke test runs ``--quick``).
"""
