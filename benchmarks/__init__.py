"""Benchmarks of vecna_async against arq, saq, taskiq and streaq (``python benchmarks/run.py``)."""
