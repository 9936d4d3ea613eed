"""ebcompress inside other training frameworks; each module needs its framework installed.

- :mod:`ebcompress.integrations.lightning`: :class:`EarlyBirdCallback` for a Lightning
  ``Trainer`` (``pip install "ebcompress[lightning]"``).

This package imports nothing itself, so ``import ebcompress.integrations`` never needs a
framework; the layer may use the core (channels, earlybird, cost, models, helpers), never the
shell (recipe, methods, run, cli).
"""
