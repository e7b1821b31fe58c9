"""Client side of restem: the Python client, the local stack and the `restem` CLI."""
