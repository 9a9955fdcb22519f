"""The FUSE mount: the cache's objects as plain files under MOUNTPOINT/BUCKET/KEY.

Owns the pyfuse3 session (``mount``), the filesystem operations (``ops``),
writes of new files (``writes``) and the read-ahead of a directory read in
order (``prefetch``). Talks to the layers below through the
:class:`~s3pool.cache.Cache` facade; never imports ``control``, ``daemon`` or
``cli``.
"""
