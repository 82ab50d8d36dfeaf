"""Helpers shared by the test modules: builders of tiny inputs (``builders``), independent reference computations
(``oracles``), gloo process groups (``distributed``), the hostile-input runner (``hostile``), figure reading
(``figures``) and the session's tiny training (``training``).

Imported as ``from helpers import ...`` or ``from helpers.oracles import ...``: tests/ is on ``sys.path`` under
pytest's default (prepend) import mode because it holds the rootdir's ``conftest.py``; test modules never import
each other or ``conftest``. Only light modules are re-exported here (no transformers, no matplotlib)."""
from .builders import QUICK, RECIPES, ROOT, load_benchmark, save_tiny_safetensors, tiny_mae, tiny_state
from .distributed import spawn_gloo, start

__all__ = ["QUICK", "RECIPES", "ROOT", "load_benchmark", "save_tiny_safetensors", "spawn_gloo", "start", "tiny_mae",
           "tiny_state"]
