"""Bucket listings: the listing index, ``__list__``, GLOB, the published listing.

Owns ``state/listings/BUCKET/index.db`` and ``data/BUCKET/__list__``
(``listings``), GLOB patterns and their matcher, the published listing a fleet
shares (``published``, ``fleet``) and the background refresher. May use
``s3`` (LIST requests), ``store`` (the layout) and the foundation modules.
"""
