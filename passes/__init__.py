"""Graph rewrites. Each module registers its passes on import; importing this package imports all.

``edgec.passes.names()`` lists the registered passes, as ``edgec passes`` prints them.
"""

from __future__ import annotations

import importlib
import pkgutil

from edgec.pass_infra import Pass, PassContext, names, parse_pipeline, parse_spec, register, registry

for _mod in pkgutil.walk_packages(__path__, prefix=__name__ + "."):
    importlib.import_module(_mod.name)

__all__ = ["Pass", "PassContext", "names", "parse_pipeline", "parse_spec", "register", "registry"]
