"""The bottom layer: what every other area of the package builds on, importing nothing above it.

``errors`` (user errors and :func:`~deepcluster.core.errors.first_line`), ``files`` (atomic writes,
JSON lines, CSV, the safe ``torch.load``), ``config`` (configs and ``--set`` overrides),
``progress`` (progress bars), ``device`` (device resolution), ``precision`` (bf16 / fp32),
``distributed`` (torch.distributed, one process = a world of size 1) and ``plot`` (matplotlib
figures written as small atomic PNGs).
"""
