"""restem's common library: configuration, event bus, artifact store, gRPC bootstrap, tasks, models.

Importing this package puts the generated protobuf root (``shared/gen``) on ``sys.path``: the
stubs that ``make proto`` generates import each other absolutely (``from restem.common.v1 import
common_pb2``), and this is the one place that arranges for that to resolve.
"""

import sys
from pathlib import Path

_GEN = str(Path(__file__).resolve().parent / "gen")
if _GEN not in sys.path:
    sys.path.insert(0, _GEN)
