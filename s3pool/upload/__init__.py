"""Uploads: PUSH of a local file, and files written in the mount.

Owns opening a file a local user named, as that user (``localfile``), PUSH
(``push``) and staged multipart uploads of files written through the mount
(``staged``). May use ``s3``, ``store`` and the foundation modules; of the
cache above it, uploads know only the :class:`~s3pool.upload.context.UploadContext`
they are given (``context``).
"""
