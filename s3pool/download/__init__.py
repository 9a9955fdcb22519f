"""Downloads in flight: one object version on its way from S3 into ``tmp/``.

Owns the shared download that readers use before it ends, with its parts,
waiting readers and in-file read-ahead (``download``), what the cache
remembers of its talks with S3 (``freshness``) and the fleet's shared cache
tier (``tier``). May use ``s3``, ``store`` and the foundation modules.
"""
