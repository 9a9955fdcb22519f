"""Bucket listings: the listing index, ``__list__``, GLOB, the published listing.

Owns ``state/listings/BUCKET/index.db`` (``index``: its schema, versions
and every SQL statement on it), writing a whole listing into it and
``data/BUCKET/__list__`` (``build``), when and what to list and the queries
(``listings``), GLOB patterns and their matcher, the published listing a fleet
shares (``published``, ``fleet``) and the background refresher. May use
``s3`` (LIST requests), ``store`` (the layout, temp files) and the foundation
modules.
"""
