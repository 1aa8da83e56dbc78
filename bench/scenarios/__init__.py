"""The measuring half of the benchmarks: each module runs one scenario of ``run_all.py``
(starting the emulator and daemons as children) and returns its figures as a JSON-able dict,
the section of the results file named after it. Nothing here renders: ``report.py`` does,
from the saved results.
"""
