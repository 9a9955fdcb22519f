"""S3 access: every request s3pool sends to S3, and the checks of every answer.

Owns the boto3 client and the lean GET path (``backend``, ``lean``), what
an answer is and the checks it must pass (``answers``), LIST pages parsed
without botocore's parser (``listparse``), the deadline and STATUS line of
each request in flight (``inflight``), the byte counters of downloads
(``progress``) and what an object's bytes must hash to (``checksums``). It
translates botocore's errors into :mod:`s3pool.errors` once. May use:
``errors``, ``logs``, ``settings`` and ``store.files`` (checked writes of a
body into a file). Never imports the layers above it.
"""
