"""The JSON control socket: protocol parsing and the trio TCP server."""
