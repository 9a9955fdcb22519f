"""The ways in over the network: the JSON control socket and the metrics endpoint.

Owns the protocol's parsing (``protocol``), the TCP and Unix servers
(``server``, ``unixsocket``), who a peer is and what it may do (``peer``) and
the Prometheus endpoint (``metrics``). Requests are served through the
:class:`~s3pool.cache.Cache` facade. May use ``cache``, the layers below it
and the foundation modules; never ``fs``, ``daemon`` or ``cli``.
"""
