"""One adapter per system, each run as ``python -m benchmarks.systems.<name> worker|produce``.

Adapters never import each other; they share only ``_common`` (standard library only, because it
runs in every virtual environment: the project's and the peers').
"""
