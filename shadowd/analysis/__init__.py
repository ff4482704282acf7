"""The analysis plane: decode exchange records, diff them, keep mergeable statistics.

``stage`` works through the records; ``snapshot`` turns statistics into mergeable snapshots
and merges them; ``worker`` is the analysis worker process around both.
"""
