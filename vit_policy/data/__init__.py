"""Demonstration data: rosbag2 -> episodes (``bags``) -> episode cache (``cache``) -> torch Dataset (``dataset``).

The synthetic demonstrations of the tests and benchmarks (exact ground truth) are written by tests/synthetic.py.
"""

from vit_policy.data.bags import BagError, Episode, bag_topics, extract_episodes, iter_bag_messages

__all__ = ["BagError", "Episode", "bag_topics", "extract_episodes", "iter_bag_messages"]
