"""Input: data sources (tfds, image folders, digits, synthetic), the prepared
cache, statistics, augmentation, multi-process reading.
"""
