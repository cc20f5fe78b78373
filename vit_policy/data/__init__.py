"""Demonstration data: rosbag2 -> episodes (``bags``) -> episode cache (``cache``) -> torch Dataset (``dataset``).

``synthetic`` writes rosbag2 demonstrations with exact ground truth for tests and benchmarks.
"""

from vit_policy.data.bags import BagError, Episode, bag_topics, extract_episodes, iter_bag_messages

__all__ = ["BagError", "Episode", "bag_topics", "extract_episodes", "iter_bag_messages"]
