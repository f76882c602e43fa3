"""A run itself: the plan checked before a model loads, the loop around the model, the
scoring at the end, and a run split over shards.
"""
