"""Pruning methods behind one interface: the ``Method`` protocol (``base``), the torch-free
catalogue of every method by key (``catalog``, with the ``options`` base of a method's recipe
section), and EB Train. The four baselines live in ``ebcompress.baselines``."""
