"""Reports of finished runs (``python -m runners.report``): runs read back, compared, and
written as report.html and report.md.
"""
