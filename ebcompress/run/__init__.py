"""One run directory: its files, its state, its lock, the pipeline that fills it phase by
phase (resumable), and compare, which runs several methods x ratios side by side."""
