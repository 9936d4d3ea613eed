"""Pruning methods behind one interface: the ``Method`` protocol, its registry, and EB Train.
The four baselines live in ``ebcompress.baselines`` and register themselves here."""
