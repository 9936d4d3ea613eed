"""What training costs: fvcore MACs, the per-phase training-FLOPs ledger, measured energy."""

from ebcompress.cost.flops import FlopCount, TrainingLedger, count_flops

__all__ = ["FlopCount", "TrainingLedger", "count_flops"]
