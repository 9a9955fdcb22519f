"""Command lines: ``s3pool`` (the daemon's) and ``s3poolctl``, and their man pages.

The top layer: ``main`` parses the daemon's command line and runs
:mod:`s3pool.daemon`; ``ctl`` and ``progress`` talk to a running daemon
through :mod:`s3pool.client`; ``manpage`` renders both parsers as roff.
"""
