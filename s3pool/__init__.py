"""s3pool: a local-disk cache of S3 objects, served over a control socket and FUSE."""

__version__ = "0.1.0"
