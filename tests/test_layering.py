"""Imports run downwards: ``models/`` (architectures, position-embedding resampling, the factory) never imports
``checkpoints/``, and every family module under ``checkpoints/families/`` is in the lists the reader iterates."""
from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import maeprobe

PACKAGE = Path(maeprobe.__file__).parent


def test_models_build_and_resize_without_importing_checkpoints():
    """In a fresh interpreter: building an MAE and resizing it (``resize_input``, the factory) loads no module of
    ``maeprobe.checkpoints``."""
    code = ("import sys\n"
            "from maeprobe.models import build_mae, resize_input\n"
            "from maeprobe.models.factory import resize\n"
            "model = build_mae('mae_vit_tiny_patch8_64')\n"
            "assert resize_input(model, 32).config.img_size == 32\n"
            "assert resize(model, 48).pos_embed.shape[1] == 1 + 36\n"
            "print(sorted(m for m in sys.modules if m.startswith('maeprobe.checkpoints')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def _imports(path: Path) -> set[str]:
    """Absolute names of the modules a maeprobe source file imports (relative imports resolved)."""
    package = list(path.relative_to(PACKAGE.parent).parts[:-1])  # the package a relative import starts from
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_models_source_imports_checkpoints():
    """Also the imports inside functions, which a fresh interpreter only meets when they run."""
    offenders = {str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path)
                                                        if n.startswith("maeprobe.checkpoints"))
                 for path in sorted((PACKAGE / "models").glob("*.py"))}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_every_family_module_is_listed():
    """A family module declares ``FAMILY`` (and ``LAYOUT`` / ``HF_TYPES`` where it has them); each declaration is
    in the lists the readers iterate, so a new module that is not placed there fails here."""
    from maeprobe.checkpoints import families
    from maeprobe.checkpoints.hf import MODEL_TYPES

    modules = [importlib.import_module(f"{families.__name__}.{info.name}")
               for info in pkgutil.iter_modules(families.__path__) if info.name != "base"]
    assert sorted(m.FAMILY.name for m in modules) == sorted(families.FAMILIES)
    assert [m.LAYOUT for m in modules if hasattr(m, "LAYOUT")] and \
        {id(m.LAYOUT) for m in modules if hasattr(m, "LAYOUT")} == {id(layout) for layout in families.LAYOUTS}
    declared = {t: h for m in modules for t, h in getattr(m, "HF_TYPES", {}).items()}
    assert declared == dict(MODEL_TYPES) and all(h.family in families.FAMILIES for h in declared.values())
    assert families.LAYOUTS[-1].family.name == "vit"  # the bare ViT matches anything, so it comes last


def test_layouts_are_recognised_in_order():
    """The first matching layout names the family, as the if-chain it replaced did: CLIP's, BEiT's and EVA's own
    keys before the plain-ViT tokens (decoder, DINO container, distillation token, registers)."""
    import torch

    from maeprobe.checkpoints.families import detect

    t = torch.zeros(1)
    cases = [
        ({"visual.conv1.weight": t, "visual.transformer.resblocks.0.attn.in_proj_weight": t}, "state dict", "clip"),
        ({"blocks.0.attn.relative_position_bias_table": t, "decoder_embed.weight": t}, "state dict", "beit"),
        ({"blocks.0.attn.q_bias": t, "dist_token": t}, "state dict", "eva"),
        ({"decoder_embed.weight": t, "dist_token": t}, "DINO training checkpoint (teacher)", "mae"),
        ({"dist_token": t}, "DINO training checkpoint (teacher)", "dino"),
        ({"dist_token": t, "reg_token": t}, "state dict", "deit"),
        ({"reg_token": t}, "state dict", "dinov2"),
        ({"visual.conv1.weight": t}, "state dict", "vit"),  # a ResNet CLIP is no ViT CLIP
    ]
    assert [detect(sd, container).family.name for sd, container, _ in cases] == [c[2] for c in cases]
