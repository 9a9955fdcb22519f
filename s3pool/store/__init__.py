"""What is on disk: the HOMEDIR layout, the cached objects, their access records.

Owns every path under HOMEDIR (``layout``: the rules that keep a key inside
``data/BUCKET/``), the cached files and their key locks (``objects``), the LRU
order (``access``) and the evictor that follows it, the crash checkpoint, the
migration of older layouts, and the files s3pool writes (``files``: every
temp file in ``tmp/``, small state files replaced whole, checked writes). May use
only ``errors``, ``logs`` and ``settings``: it knows nothing of S3.
"""
