"""The runner: benchmark, serve, evaluate and report on the models of :mod:`model_interface`."""

import csv

# The csv module refuses fields over 131,072 characters by default, less than a long prompt,
# reference or generated answer can be. The limit is the module's, for the whole process, so it
# is raised once, here, for every reader of the runner's CSV files.
csv.field_size_limit(2**31 - 1)
