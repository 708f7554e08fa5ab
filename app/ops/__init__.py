"""Operating the process: metrics, logs, heap settings, lifecycle, admission, the health probe."""
