"""The FUSE mount: the cache's objects as plain files under MOUNTPOINT/BUCKET/KEY.

Owns the pyfuse3 session (``mount``), the filesystem operations (``ops``),
the nodes the kernel knows and their inode numbers (``nodes``), writes of
new files (``writes``) and the read-ahead of a directory read in order
(``prefetch``). Talks to the layers below through one facade, the
:class:`~s3pool.cache.Cache`: of s3pool it imports only ``s3pool.cache``
(which re-exports the few types it needs), ``errors`` and ``settings``, and
never reaches through the cache into what it holds
(tests/test_fs_facade_unit.py checks both).
"""
