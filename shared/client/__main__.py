"""`python -m shared.client` is the `restem` command."""

from shared.client.cli import main

main()
