"""report.json / report.md and the plots, built from a run directory alone, and the run's
health verdict."""
