"""The joint law L(N, D) of a zoo and what is planned from it.

Layers: ``law`` (the fit and its identifiability) and ``inputs`` (which runs, L, D, families)
and ``k`` (FLOPs per parameter per example, model aliases) -> ``frontier`` (per-family fits,
the compute frontier, the fits.json section) -> ``target`` (the one cost-of-target function)
-> ``planner`` -> ``figures``, ``report``.
"""
