"""The read-through FUSE view of the cache."""
