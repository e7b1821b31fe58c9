"""The five restem services. Importing `shared` first puts the generated protobuf stubs on the path."""

import shared  # noqa: F401
