"""Recipe configuration: YAML files with ``base:`` inheritance and ``key.sub=value`` overrides, both read by YAML
1.2's core schema (``RecipeLoader``: no YAML 1.1 octals, sexagesimals, dates or yes/no booleans); each recipe key's
default, check and meaning declared once (``KEYS``); the bundled recipes (``recipe_dir``, package data); and the
one reader of the ``config.yaml`` a run saved (``load_saved_yaml``)."""
from __future__ import annotations

import copy
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from .. import validate as checks
from ..errors import MaeprobeError


def recipe_dir() -> Path:
    """The folder of the bundled recipes: ``maeprobe/recipes``, package data found through ``importlib.resources``
    (so a wheel install has them wherever it runs; in the repository ``recipes/`` links to it)."""
    return Path(str(resources.files("maeprobe") / "recipes")).resolve()


def _merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


MAX_RECIPE_BYTES = 1_000_000


# --------------------------------------------------------------------------- YAML 1.2 scalars
class _Int(int):
    """A whole number read from YAML, with the text it was written as (``text``): a text setting keeps that text
    (``run.output_dir: 0123`` is the folder '0123', not '123'); ``check_recipe`` stores plain ints."""


class _Float(float):
    """A number read from YAML, with the text it was written as (``text``; see ``_Int``)."""


_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}


class _UniqueKeys:
    """A YAML loader part that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        """A key given twice in one mapping is refused (YAML says keys are unique; PyYAML would keep the last one
        silently, so ``name: a`` then ``name: b`` ran as b)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"the key {key[:40]!r} is given twice",
                                                            key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


class RecipeLoader(_UniqueKeys, yaml.SafeLoader):
    """``yaml.SafeLoader`` resolving plain scalars by YAML 1.2's core schema instead of YAML 1.1's: ``010`` is 10
    (1.1: octal 8), ``1:00`` and ``2001-12-14`` are text (1.1: 60 and a date), ``yes``/``no``/``on``/``off`` are text
    (1.1: booleans), ``1e-4`` is a number (1.1: text); only true/false are booleans, only null/~/nothing is null.
    Numbers remember their text (``_Int``, ``_Float``). Recipe files and ``key=value`` overrides are read with it,
    so a value means the same in both and nothing is silently reinterpreted: text where a number or true/false is
    expected is refused by the schema, naming the key."""

    yaml_implicit_resolvers: dict = {}


RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"),
                                   ["~", "n", "N", ""])
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(f"^(?:{_INT.pattern})$"),
                                   list("-+0123456789"))
RecipeLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^(?:{_FLOAT.pattern})$"),
                                   list("-+.0123456789"))


def _construct_int(loader, node):
    text = loader.construct_scalar(node)
    if not _INT.fullmatch(text):
        raise yaml.constructor.ConstructorError(None, None, "expected a whole number", node.start_mark)
    body = text.lstrip("+-")
    value = int(body[2:], 8) if body.startswith("0o") else int(body[2:], 16) if body.startswith("0x") else int(body)
    number = _Int(-value if text.startswith("-") else value)
    number.text = text
    return number


def _construct_float(loader, node):
    text = loader.construct_scalar(node)
    if not _FLOAT.fullmatch(text):
        raise yaml.constructor.ConstructorError(None, None, "expected a number", node.start_mark)
    lower = text.lower()
    value = float(lower.replace(".inf", "inf").replace(".nan", "nan")) if ".inf" in lower or ".nan" in lower \
        else float(text)
    number = _Float(value)
    number.text = text
    return number


def _construct_bool(loader, node):
    text = loader.construct_scalar(node)
    if text not in _BOOL:
        raise yaml.constructor.ConstructorError(None, None, "expected true or false", node.start_mark)
    return _BOOL[text]


RecipeLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
RecipeLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
RecipeLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def load_yaml(text: str):
    """``text`` read by ``RecipeLoader`` (YAML 1.2 scalars, safe: no Python objects)."""
    return yaml.load(text, Loader=RecipeLoader)


class SavedLoader(_UniqueKeys, yaml.SafeLoader):
    """The loader of the ``config.yaml`` a run saved (``yaml.safe_dump``'s output, read back as untrusted input):
    YAML 1.1 scalars as ``yaml.safe_dump`` wrote them (its exact inverse, so a saved value compares equal to the
    setting it came from: the text '1e5' stays text, which YAML 1.2 would read as a number), no anchors or aliases
    (maeprobe never writes them; aliases would let a small file expand when flattened) and no key given twice."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent) or getattr(self.peek_event(), "anchor", None) is not None:
            raise yaml.YAMLError("YAML anchors and aliases")
        return super().compose_node(parent, index)


def load_saved_yaml(text: str):
    """``text`` (a saved ``config.yaml``) read by ``SavedLoader``. Raises ``yaml.YAMLError`` (also ``ValueError``,
    ``OverflowError``, ``RecursionError`` for values or nesting YAML cannot read), which the caller words."""
    return yaml.load(text, Loader=SavedLoader)


def _read(path: Path, seen: tuple = ()) -> dict:
    if path in seen:
        raise MaeprobeError(f"{_shown(path)}: circular 'base:'")
    if len(seen) > 16:
        raise MaeprobeError(f"{_shown(path)}: more than 16 nested 'base:' recipes")
    if not path.is_file():
        raise MaeprobeError(f"{_shown(path)}: no such recipe (expected a YAML file)")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise MaeprobeError(f"{_shown(path)}: {path.stat().st_size:,} bytes is too large for a recipe "
                            f"(at most {MAX_RECIPE_BYTES:,})")
    try:
        data = load_yaml(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise MaeprobeError(f"{_shown(path)}: not UTF-8 text; expected a YAML recipe") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise MaeprobeError(f"{_shown(path)}: invalid YAML{where} ({_shown(str(problem))[:120]})") from None
    except (ValueError, OverflowError) as exc:  # e.g. a 5000-digit number, '!!timestamp 2001-13-45'
        raise MaeprobeError(f"{_shown(path)}: a value YAML cannot read ({_shown(str(exc))[:120]})") from None
    except RecursionError:
        raise MaeprobeError(f"{_shown(path)}: nested too deeply; expected a YAML recipe") from None
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise MaeprobeError(f"{_shown(path)}: holds a YAML {type(data).__name__}; expected a mapping of recipe keys")
    _check_file_paths(data, path)
    _note_outside_paths(data, path)
    if "base" in data:
        base_name = data.pop("base")
        if not isinstance(base_name, str) or not base_name.strip():
            raise MaeprobeError(f"{_shown(path)}: 'base: {base_name!r}' must name another recipe file, e.g. "
                                "base: _tiny.yaml")
        base_path = (path.parent / base_name).resolve()
        allowed = [path.parent.resolve(), recipe_dir()]
        if base_path.suffix not in (".yaml", ".yml") or not any(base_path.is_relative_to(a) for a in allowed):
            raise MaeprobeError(f"{_shown(path)}: 'base: {_shown(base_name)}' must name a .yaml recipe in the same "
                                "folder (or a bundled recipe); a recipe never reads other files")
        base = _read(base_path, seen + (path,))
        data = _merge(base, data)
    return data



def _check_file_paths(data: dict, path: Path) -> None:
    """A recipe file writes only below the folder it is run from: its ``run.output_dir`` is relative and never
    climbs with '..' (an absolute or climbing folder is the user's to give, as ``run.output_dir=...`` on the
    command line); its ``name`` (which ``{name}`` puts into paths) is checked by the schema."""
    run = data.get("run")
    folder = run.get("output_dir") if isinstance(run, dict) else None
    if isinstance(folder, str) and (Path(folder).is_absolute() or ".." in Path(folder).parts
                                    or folder.startswith("~")):
        raise MaeprobeError(f"{_shown(path)}: run.output_dir {_shown(folder)!r} leaves the folder the recipe is run "
                            "from; a recipe file may only name a relative folder (give another place on the command "
                            "line: run.output_dir=...)")


# data a recipe file reads from outside the folder it is run from: (recipe file, dotted key, value), collected while
# its files are read and reported by ``load_recipe`` when the resolved recipe still uses the value
_READS = ("data.path", "data.single_image", "eval.checkpoint")
_outside: list = []


def _note_outside_paths(data: dict, path: Path) -> None:
    """Remember the paths a recipe file (or one of its readings) names for ``_READS`` that lie outside the folder
    it is run from (absolute, from the home folder, or climbing with '..'): unlike its outputs they are allowed,
    but ``load_recipe`` says so in a warning naming them, so a downloaded recipe cannot read, say, a private photo
    folder into a checkpoint unnoticed."""
    sections = [data] + [block for block in (data.get("readings") or {}).values() if isinstance(block, dict)] \
        if isinstance(data.get("readings") or {}, dict) else [data]
    for section in sections:
        for dotted in _READS:
            group, key = dotted.split(".")
            value = section.get(group).get(key) if isinstance(section.get(group), dict) else None
            if isinstance(value, str) and (Path(value).is_absolute() or value.startswith("~")
                                           or ".." in Path(value).parts):
                _outside.append((path, dotted, value))


def _shown(text) -> str:
    from ..validate import one_line

    return one_line(text, 300)


def parse_override(text: str) -> tuple[list[str], object]:
    """``optim.epochs=3`` -> (['optim', 'epochs'], 3). Values are read as a recipe file's are (``RecipeLoader``:
    YAML 1.2, so ``010`` is 10 and ``1:00`` is text, which a numeric setting refuses), and keep their text: a
    text setting gets exactly what was typed (``run.output_dir=0123`` is the folder '0123'; YAML would also cut
    "o/rep #2" at its comment sign). ``check_recipe`` then checks types and ranges."""
    if not isinstance(text, str) or "=" not in text:
        raise MaeprobeError(f"override {_shown(text)!r}: expected key=value, e.g. optim.epochs=3")
    key, value = text.split("=", 1)
    if value.strip() == "~":  # YAML's null, or the home folder a shell did not expand: ask which
        raise MaeprobeError(f"override {_shown(key.strip())}=~: '~' is YAML's null but reads like the home folder; "
                            "write null, or the folder's full path")
    try:
        parsed = load_yaml(value)
    except (yaml.YAMLError, ValueError, OverflowError, RecursionError):
        parsed = value.strip()  # not a YAML scalar: the text itself (checked by the schema like any value)
    if isinstance(parsed, str) and not value.strip().startswith(("'", '"')):
        parsed = value.strip()  # text is taken as typed
    return key.strip().split("."), parsed


def load_recipe(path: str | Path, overrides=()) -> dict:
    """DEFAULTS <- base recipes <- recipe <- overrides, then checked (``check_recipe``): unknown keys, wrong
    types and values out of range are one-line errors before anything runs or is written.

    ``overrides``: ``key.sub=value`` strings (values read as ``parse_override`` says: YAML 1.2, text kept as
    typed), or ``(dotted key, value)`` pairs whose values are used as they are (for programs: a path holding
    ``" #"`` is not cut as a YAML comment). Paths to read that a recipe file names outside the folder it is run
    from are reported as a warning."""
    del _outside[:]
    data = _read(Path(path).resolve())
    outside = list(_outside)
    readings = _readings(data.pop("readings", None), path)
    recipe = _merge(DEFAULTS, data)
    config = _apply_overrides(copy.deepcopy(recipe), overrides)
    chosen = config.get("reading")
    if chosen is not None:
        if not isinstance(chosen, str) or chosen not in readings:
            names = ", ".join(sorted(readings)) or "none"
            raise MaeprobeError(f"reading={_shown(chosen)!r}: this recipe's readings are: {names}")
        config = _apply_overrides(_merge(recipe, readings[chosen]), overrides)  # recipe <- reading <- command line
        config["name"] = f"{config['name']}-{chosen}"  # its own run folder and checkpoint names
    _check(config, DEFAULTS, "")
    check_recipe(config)
    config["run"]["output_dir"] = config["run"]["output_dir"].replace("{name}", config["name"])
    for file, dotted, value in dict.fromkeys(outside):
        group, key = dotted.split(".")
        if config[group][key] == value:  # still the file's choice (not replaced on the command line)
            warnings.warn(f"{_shown(file)}: {dotted} reads {_shown(value)!r}, outside the folder the recipe is run "
                          "from (a choice of the recipe file; check that it is meant)", stacklevel=2)
    return config


def _readings(value, path) -> dict:
    """A recipe's ``readings:``: names -> sections of ordinary recipe keys (checked like the recipe itself once
    merged); a reading cannot choose another reading, a base or an output folder."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 16:
        raise MaeprobeError(f"{_shown(path)}: 'readings:' must map at most 16 names to sections of recipe keys")
    for name, block in value.items():
        if not isinstance(name, str) or not isinstance(block, dict):
            raise MaeprobeError(f"{_shown(path)}: reading {_shown(name)!r} "
                                "must be a name with a section of recipe keys")
        bad = next((key for key, part in block.items() if isinstance(DEFAULTS.get(key), dict)
                    and part is not None and not isinstance(part, dict)), None)
        if bad is not None:
            raise MaeprobeError(f"{_shown(path)}: readings: {_shown(name)}: {_shown(bad)}: expected a section of "
                                f"recipe keys, got {_shown(block[bad])!r}")
        if {"reading", "readings", "base", "name"} & set(block) or "output_dir" in (block.get("run") or {}):
            raise MaeprobeError(f"{_shown(path)}: reading {_shown(name)!r} may not set reading, base, name or "
                                "run.output_dir")
    return value


def _apply_overrides(config: dict, overrides) -> dict:
    for item in overrides:
        if isinstance(item, tuple) and len(item) == 2:
            keys, value, text = str(item[0]).split("."), item[1], f"{item[0]}=..."
        else:
            keys, value = parse_override(item)
            text = _shown(item)
        node = config
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise MaeprobeError(f"override {text!r}: unknown section {key!r}")
            node = node[key]
        if keys[-1] not in node:
            raise MaeprobeError(f"override {text!r}: unknown key {'.'.join(keys)!r}")
        node[keys[-1]] = value
    return config


def _check(config: dict, reference: dict, prefix: str) -> None:
    for key, value in config.items():
        if key in ("base",):
            continue
        if not isinstance(key, str) or key not in reference:
            raise MaeprobeError(f"unknown recipe key {prefix}{_shown(key)!r}")
        if isinstance(reference[key], dict):
            if not isinstance(value, dict):
                raise MaeprobeError(f"recipe key {prefix}{key}: expected a section of keys, got {_shown(value)!r}")
            _check(value, reference[key], f"{prefix}{key}.")


# --------------------------------------------------------------------------- the recipe keys, each declared once
def _bf16(name, value):
    """true (bf16 autocast on CUDA), false or 'always' (on every device, CPU autocast included)."""
    if isinstance(value, bool) or value == "always":
        return value
    raise MaeprobeError(f"{name}: expected true (bf16 on CUDA), false or always (any device, CPU autocast included), "
                        f"got {_shown(value)!r}")


def _file_name(name, value):
    """A plain file name inside run.output_dir (no folders, no '..'), ending in .pth."""
    value = checks.text()(name, value)
    if "/" in value or "\\" in value or value in (".", "..") or value.startswith(".") or not value.endswith(".pth"):
        raise MaeprobeError(f"{name}: expected a plain file name ending in .pth (it is written inside "
                            f"run.output_dir), got {_shown(value)!r}")
    return value


def _device(name, value):
    """cpu, cuda, cuda:N or mps, or null (whether it exists here is checked when the recipe runs)."""
    if value is None:
        return None
    import torch

    value = checks.text(max_len=64)(name, value)
    try:
        device = torch.device(value.strip())
    except (RuntimeError, ValueError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):
        raise MaeprobeError(f"{name}: expected cpu, cuda, cuda:N, mps or null, got {_shown(value)!r}")
    return value.strip()


def _preset(name, value):
    from ..models import PRESETS

    return checks.choice(*PRESETS)(name, value)


def _run_name(name, value):
    """A run name: letters, digits, '-', '_', '.', not starting with '.' (it becomes part of paths)."""
    value = checks.text(max_len=200)(name, value)
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", value):
        raise MaeprobeError(f"{name}: expected a plain run name (letters, digits, '-', '_', '.'), got "
                            f"{_shown(value)!r}")
    return value


@dataclass(frozen=True)
class Key:
    """One recipe key: its default, its check (type, range, choices; a ``maeprobe.validate`` checker) and what it
    means. ``DEFAULTS`` and ``SCHEMA`` are read off ``KEYS``, so a key is added in one place."""

    default: object
    check: Callable
    doc: str


_number, _choice, _text, _pair = checks.number, checks.choice, checks.text, checks.pair
_TASKS = ("pretrain", "finetune", "linprobe", "knn")

KEYS: dict[str, Key] = {
    "name": Key("run", _run_name, "the run's name: its folder (run.output_dir's {name}) and the findings' run names"),
    "reading": Key(None, _text(none=True, max_len=100),
                   "the name of one of the recipe file's ``readings:`` (alternative readings of the paper, e.g. "
                   "lcmae_b's reading=plain_mae), merged over the recipe before the command line's other overrides"),
    "task": Key("pretrain", _choice(*_TASKS), "pretrain | finetune | linprobe | knn"),
    "method": Key("mae", _choice("mae", "lcmae", "ae", "umae"), "mae | lcmae | ae | umae (pretraining)"),
    "model.preset": Key("mae_vit_base_patch16", _preset, "the architecture (``maeprobe.models.PRESETS``)"),
    "model.decoder_depth": Key(None, _number(1, 64, whole=True, none=True), "decoder blocks (null: the preset's)"),
    "model.decoder_embed_dim": Key(None, _number(1, 8192, whole=True, none=True),
                                   "decoder width (null: the preset's)"),
    "model.decoder_num_heads": Key(None, _number(1, 1024, whole=True, none=True),
                                   "decoder heads (null: the preset's); must divide the decoder width"),
    "model.decoder_type": Key("transformer", _choice("transformer", "gaussian", "conv"),
                              "transformer (MAE) or the LC-MAE paper's gaussian / conv decoders"),
    "model.pred_size": Key(None, _number(1, 1024, whole=True, none=True),
                           "AE(k): the side k of the predicted block, centred on its patch (method ae only)"),
    "model.norm_pix_loss": Key(False, checks.flag, "MAE's per-patch normalised pixel targets"),
    "model.mask_ratio": Key(0.75, _number(0, 1, hi_open=True), "the share of patches masked"),
    # LC-MAE (Section 3.3): loss weights of L_MAE, L_cross (Eq. 5), L_in (Eq. 6); projector output 1024-d (Section 5)
    "lcmae.proj_dim": Key(1024, _number(1, 65536, whole=True), "the projector's output width (Section 5: 1024)"),
    "lcmae.mae": Key(1.0, _number(0, 1e6), "weight of L_MAE (Section 3.3)"),
    "lcmae.cross": Key(1.0, _number(0, 1e6), "weight of L_cross (Eq. 5)"),
    "lcmae.in_view": Key(1.0, _number(0, 1e6), "weight of L_in (Eq. 6)"),
    "lcmae.projector_input": Key("pred", _choice("pred", "features"),
                                 "'pred' = v = p(h(x, m)) on the Eq. 1 output (the paper), 'features' = the "
                                 "normalised decoder features before decoder_pred"),
    "lcmae.in_view_target": Key("target", _choice("target", "pixels"),
                                "'target' = the reconstruction target of L_MAE (normalised patches under "
                                "norm_pix_loss), 'pixels' = the input patches"),
    "lcmae.reduction": Key("mean", _choice("mean", "sum"),
                           "'mean' (over the positions / pairs of the batch, as MAE's own loss) or 'sum' (Eq. 5/6 "
                           "as written: per-image sums, averaged over images)"),
    # U-MAE: weight x uniformity loss (tau) of the CLS feature over the gathered batch
    "umae.weight": Key(1.25e-5, _number(0, 1e6), "weight of the uniformity term"),
    "umae.tau": Key(0.1, _number(0, 1e3, lo_open=True), "the uniformity term's temperature"),
    "umae.gather": Key("exact", _choice("exact", "reference"),
                       "'exact' (the full-batch gradient, independent of the number of processes) or 'reference' "
                       "(zhangq327/U-MAE's GatherLayer: each process keeps only its own slice of the gradient, i.e. "
                       "1/W of the full-batch one)"),
    "umae.feature": Key("cls", _choice("cls", "double_norm"),
                        "'cls' = the CLS token after the encoder's final norm (once); 'double_norm' = U-MAE's code "
                        "(models_mae.py: ``self.norm(latent)[:, 0]`` on the already normed latent, i.e. the norm "
                        "applied twice)"),
    "umae.batch": Key("global", _choice("global", "micro"),
                      "'global' = the term over the whole global batch whatever its split into processes and "
                      "gradient-accumulation micro-steps (features of all micro-steps first, then each micro-step's "
                      "backward carries its slice of the full-batch gradient, as gradient-cache methods do: one extra "
                      "no-grad encoder pass per micro-step when accumulating); 'micro' = one term per micro-step over "
                      "the processes' micro-batches (what U-MAE's code does under --accum_iter)"),
    "data.path": Key(None, _text(none=True), "an ImageFolder root (or folder of images); null: the built-in photos"),
    "data.single_image": Key(None, _text(none=True), "one image whose crops make the data set (single-image MAE)"),
    "data.samples_per_epoch": Key(None, _number(1, 1e9, whole=True, none=True),
                                  "samples per epoch (null: the images found; 1281 crops of a single image)"),
    "data.crop_scale": Key([0.2, 1.0], _pair(0.0, 1.0, ordered=True), "RandomResizedCrop's area range (MAE: 0.2-1)"),
    "data.num_workers": Key(8, _number(0, 1024, whole=True), "DataLoader worker processes"),
    "optim.optimizer": Key("adamw", _choice("adamw", "sgd", "lars"),
                           "adamw (pretraining, fine-tuning), lars or sgd (linear probing)"),
    "optim.epochs": Key(100, _number(1, 1e6, whole=True), "passes over the data"),
    "optim.global_batch": Key(1024, _number(1, 1 << 24, whole=True),
                              "images per optimiser step over all processes (the papers' \"batch size\"); the "
                              "per-process batch and gradient accumulation follow from the number of processes "
                              "(``batch_plan``)"),
    "optim.batch_per_process": Key(None, _number(1, 1 << 24, whole=True, none=True),
                                   "caps what one process holds at once (more accumulation instead)"),
    "optim.base_lr": Key(1.5e-4, _number(0, 10), "lr = base_lr x global_batch / 256 (MAE's rule, LC-MAE Section 5)"),
    "optim.weight_decay": Key(0.05, _number(0, 10), "decoupled weight decay (norms and biases excepted)"),
    "optim.warmup_epochs": Key(20, _number(0, 1e6), "linear warmup before the half-cycle cosine"),
    "optim.min_lr": Key(0.0, _number(0, 10), "the cosine's floor"),
    "optim.betas": Key([0.9, 0.95], _pair(0.0, 0.999999), "AdamW's betas in pretraining (MAE: 0.9, 0.95)"),
    "optim.layer_decay": Key(0.75, _number(0, 1, lo_open=True), "fine-tuning: layer-wise lr decay"),
    "optim.label_smoothing": Key(0.1, _number(0, 1, hi_open=True), "fine-tuning: label smoothing"),
    "optim.mixup": Key(0.0, _number(0, 100), "fine-tuning: mixup alpha (0: off)"),
    "optim.cutmix": Key(0.0, _number(0, 100), "fine-tuning: cutmix alpha (0: off)"),
    "optim.reprob": Key(0.25, _number(0, 1), "fine-tuning: random erasing probability"),
    "optim.drop_path": Key(0.1, _number(0, 1, hi_open=True), "fine-tuning: stochastic depth rate"),
    "optim.auto_augment": Key("rand-m9-mstd0.5-inc1", _text(none=True, max_len=200),
                              "fine-tuning: MAE's RandAugment (main_finetune.py --aa): magnitudes from N(9, 0.5), "
                              "clipped to [0, 10] by timm; the 0-bit posterize of a magnitude-10 draw, which current "
                              "Pillow refuses, is computed by evaluate._posterize as older Pillow did (a black image)"),
    "eval.checkpoint": Key(None, _text(none=True), "the pretrained checkpoint an evaluation starts from"),
    "eval.knn_k": Key(20, _number(1, 1e6, whole=True), "k-NN: neighbours voting"),
    "eval.knn_temperature": Key(0.07, _number(0, 1e3, lo_open=True), "k-NN: votes weighted by exp(sim / T)"),
    "run.output_dir": Key("runs/{name}", _text(), "the run folder ({name}: the run's name)"),
    "run.seed": Key(0, _number(0, 2**63 - 1, whole=True), "every random choice derives from it"),
    "run.checkpoint_every": Key(1000, _number(1, 1e12, whole=True), "optimiser steps between checkpoints"),
    "run.log_every": Key(20, _number(1, 1e12, whole=True),
                         "optimiser steps between log rows (the loss is read from the device only then)"),
    "run.bf16": Key(True, _bf16, "true = bf16 autocast on CUDA (float32 on other devices), always = on every device "
                                 "(CPU autocast included: the GPU run's mixed-precision code on a CPU), false = "
                                 "float32"),
    "run.compile": Key(False, checks.flag, "torch.compile of the pretraining step (evaluation recipes run eager)"),
    "run.device": Key(None, _device, "cpu, cuda, cuda:N or mps (null: cuda when there is one)"),
    "run.resume": Key(True, checks.flag, "continue from the run folder's checkpoint when there is one"),
    "run.max_minutes": Key(None, _number(0, 1e9, lo_open=True, none=True),
                           "stop (and checkpoint) after this wall time; starting again resumes"),
    "run.checkpoint_name": Key("checkpoint-last.pth", _file_name, "the training checkpoint's file name"),
}


def _nested(flat: dict) -> dict:
    """{'a.b': v} -> {'a': {'b': v}}, keeping the declaration order (config.yaml lists keys in it)."""
    out: dict = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = copy.deepcopy(value)
    return out


DEFAULTS: dict = _nested({dotted: key.default for dotted, key in KEYS.items()})
SCHEMA: dict = {dotted: key.check for dotted, key in KEYS.items()}


def check_recipe(config: dict) -> dict:
    """Check every key of a resolved recipe against ``KEYS`` (types, ranges, choices) and store the checked
    values (numbers written as text become numbers). Raises MaeprobeError naming the key."""
    for dotted, key in KEYS.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = key.check(f"recipe key {dotted}", node.get(leaf))
    return config


@dataclass(frozen=True)
class BatchPlan:
    """How a recipe's global batch is split: ``world`` processes x ``accum`` micro-steps x ``micro`` images."""

    global_batch: int
    world: int
    per_process: int
    accum: int
    micro: int
    lr: float | None = None

    def describe(self) -> str:
        text = (f"global batch {self.global_batch} = {self.world} process(es) x {self.accum} accumulation "
                f"step(s) x {self.micro} images")
        return text + (f"; lr {self.lr:.4g}" if self.lr is not None else "")


def batch_plan(config: dict, world: int) -> BatchPlan:
    """Split ``optim.global_batch`` over ``world`` processes, respecting ``optim.batch_per_process``.

    Each process takes global_batch / world images per optimiser step (an error when that is not a whole
    number); with a cap, the smallest number of accumulation steps whose micro-batch divides the
    per-process batch and fits under the cap. The lr is base_lr x global_batch / 256 in every case.
    """
    optim = config["optim"]
    global_batch = int(optim["global_batch"])
    if global_batch < 1 or world < 1:
        raise MaeprobeError(f"optim.global_batch must be >= 1, got {global_batch}")
    if global_batch % world:
        divisors = [n for n in range(1, min(global_batch, 64) + 1) if global_batch % n == 0]
        raise MaeprobeError(f"optim.global_batch={global_batch} cannot be split evenly over {world} processes; "
                            f"run on {', '.join(map(str, divisors))} processes or set optim.global_batch to a "
                            f"multiple of {world}")
    per_process = global_batch // world
    cap = optim.get("batch_per_process")
    accum = 1
    if cap is not None:
        if int(cap) < 1:
            raise MaeprobeError(f"optim.batch_per_process must be >= 1, got {cap}")
        accum = -(-per_process // int(cap))
        while per_process % accum:
            accum += 1
    lr = optim["base_lr"] * global_batch / 256 if optim.get("base_lr") is not None else None
    return BatchPlan(global_batch, world, per_process, accum, per_process // accum, lr)


FINETUNE_ONLY = ("layer_decay", "label_smoothing", "mixup", "cutmix", "reprob", "drop_path", "auto_augment")


def used_settings(config: dict) -> dict:
    """The part of a resolved recipe that its run reads: a pretraining run has no fine-tuning keys, no
    ``eval`` section and only its own method's loss section; an evaluation run has no pretraining method or
    masking settings."""
    config = copy.deepcopy(config)
    if config.get("reading") is None:
        config.pop("reading", None)
    if config["task"] == "pretrain":
        config.pop("eval", None)
        for key in FINETUNE_ONLY:
            config["optim"].pop(key, None)
        for method in ("lcmae", "umae"):
            if config["method"] != method:
                config.pop(method, None)
        if config["method"] != "ae":
            config["model"].pop("pred_size", None)
    else:
        for key in ("method", "lcmae", "umae"):
            config.pop(key, None)
        for key in ("mask_ratio", "norm_pix_loss", "decoder_depth", "decoder_embed_dim", "decoder_num_heads",
                    "decoder_type", "pred_size"):
            config["model"].pop(key, None)
    return config


def show_recipe(config: dict, world: int = 1) -> str:
    """What the run uses (``used_settings``) as YAML, followed by the derived batch split and lr (as YAML
    comments)."""
    text = yaml.safe_dump(used_settings(config), sort_keys=False)
    plan = batch_plan(config, world)
    text += f"# derived for {world} process(es): {plan.describe()}\n"
    if config["task"] == "pretrain":
        text += f"# method {config['method']}, mask ratio {config['model']['mask_ratio']}, " \
                f"{config['optim']['epochs']} epochs, {config['optim']['warmup_epochs']} warmup epochs\n"
    return text


def launch_command(path: str | Path) -> str:
    """The launch command from a recipe's header comment (first line starting with '# launch:')."""
    for line in Path(path).read_text().splitlines():
        if line.lower().startswith("# launch:"):
            return line.split(":", 1)[1].strip()
    return f"maeprobe recipe run {path}"
