"""restem's common library: configuration, event bus, artifact store, gRPC bootstrap, tasks, models.

The generated protobuf stubs are the package `restem` (installed from `shared/gen/restem` with the
project; see pyproject.toml), so `from restem.common.v1 import common_pb2` works wherever restem is
installed, without touching `sys.path`.
"""

__version__ = "0.1.0"  # pyproject.toml's version; shown by GetStats and the restem_service_info metric
