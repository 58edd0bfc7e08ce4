"""mkdocs-gallery configuration: examples run in their quick mode unless asked otherwise."""

import os

os.environ.setdefault("ODENET_EXAMPLES_QUICK", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "agg")

conf = {}
