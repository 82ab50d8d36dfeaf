"""Issue 27 (scripts, checkpoint file loading, generic command-line error handling): hostile output folders,
checkpoints whose name lies about their content, pickles that ask for callables, over-long and deeply nested
paths, file names carrying newlines, and allocations that fail under an address-space cap. Every refusal is one
line ``error: ...`` with exit status 2 (``tests/helpers/hostile.py``); nothing the tool did not create is written or
removed; the expectations come from the generated inputs, never from the code under test."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_state
from helpers.hostile import assert_clean_exit, assert_refused, run_cases
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
HELPER = ROOT / "benchmarks" / "gpu_check.py"
META = {"maeprobe": json.dumps({"num_heads": 2})}
WIDTH, DEPTH = 16, 1  # the architecture of tiny_state(), which `info` must report


def _safetensors(path: Path, state=None) -> Path:
    save_file({k: v.contiguous() for k, v in (state or tiny_state()).items()}, str(path), metadata=META)
    return path


def _pickled(path: Path, **kwargs) -> Path:
    torch.save({"model": tiny_state(), "maeprobe": {"num_heads": 2}}, path, **kwargs)
    return path


def _tree(folder: Path) -> dict:
    """Every path under ``folder`` (links not followed) with its content, or its link target."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = ("link", os.readlink(path))
        elif path.is_file():
            out[key] = ("file", path.read_bytes())
        else:
            out[key] = ("folder",)
    return out


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# --------------------------------------------------------------------------- 1. gpu_check.sh --out
def _gpu_check(*args, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """The script in its quickest mode: the CPU dry run, the env stage only, cut after 1 s (no GPU needed)."""
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), "--dry-run", "--only", "env", "--budget", "env=1", *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=timeout)


def _fill_work_and_logs(folder: Path, outside: Path) -> None:
    (folder / "work").mkdir()
    (folder / "work" / "thesis.tex").write_text("years of work\n")
    (folder / "logs").mkdir()
    (folder / "logs" / "env.log").write_text("my own log\n")


def _fill_results_only(folder: Path, outside: Path) -> None:
    (folder / "results.md").write_text("# my results, not the script's\n")


def _fill_unrelated(folder: Path, outside: Path) -> None:
    (folder / "photos").mkdir()
    (folder / "photos" / "a.jpg").write_bytes(b"\xff\xd8not really a jpeg")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")


def _fill_linked_work(folder: Path, outside: Path) -> None:
    (folder / "work").symlink_to(outside, target_is_directory=True)
    (folder / "logs").symlink_to(outside / "precious.txt")


OCCUPIED = {"work_and_logs": _fill_work_and_logs, "results_only": _fill_results_only,
            "unrelated": _fill_unrelated, "linked_work": _fill_linked_work}


@pytest.mark.parametrize("kind", sorted(OCCUPIED))
def test_gpu_check_refuses_a_folder_it_did_not_make(tmp_path, kind):
    """A non-empty --out folder that the script did not make is refused before anything is removed or run."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("outside the output folder\n")
    target = tmp_path / "out"
    target.mkdir()
    OCCUPIED[kind](target, outside)
    before, before_outside = _tree(target), _tree(outside)
    result = _gpu_check("--out", target, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    line = _one_error_line(result.stderr)
    assert str(target) in line or "out" in line
    assert _tree(target) == before and _tree(outside) == before_outside


def test_gpu_check_out_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("a file\n")
    result = _gpu_check("--out", "afile", cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    _one_error_line(result.stderr)
    assert (tmp_path / "afile").read_text() == "a file\n"


def test_gpu_check_relative_out_is_the_callers(tmp_path):
    """A relative --out is a folder of the caller's working folder, not of the repository."""
    name = f"gpu-check-test-{uuid.uuid4().hex[:12]}"
    assert not (ROOT / name).exists()
    try:
        result = _gpu_check("--out", f"{name}/run", cwd=tmp_path)
        assert (tmp_path / name / "run" / "results.md").is_file(), result.stdout + result.stderr
        assert not (ROOT / name).exists()
    finally:
        if (ROOT / name).exists():  # made by the run under test (the bug), never before it
            shutil.rmtree(ROOT / name)


def test_gpu_check_reruns_into_its_own_folder_and_keeps_the_rest(tmp_path):
    """A second run into the script's own folder replaces only what the script writes."""
    target = tmp_path / "out"
    first = _gpu_check("--out", target, cwd=tmp_path)
    assert (target / "results.md").is_file(), first.stdout + first.stderr
    (target / "notes.txt").write_text("the user's notes beside the results\n")
    (target / "results.md").write_text("stale\n")
    second = _gpu_check("--out", target, cwd=tmp_path)
    assert second.returncode in (0, 1), second.stdout + second.stderr  # 1: the env stage ran out of its 1 s
    assert (target / "results.md").read_text().startswith("# maeprobe GPU check"), second.stdout + second.stderr
    assert (target / "notes.txt").read_text() == "the user's notes beside the results\n"
    assert (target / "logs" / "env.log").is_file()


@pytest.mark.parametrize("command", ["images", "standins"])
def test_gpu_check_helpers_refuse_occupied_folders(tmp_path, command):
    """``gpu_check.py images DIR`` / ``standins DIR`` never overwrite files they did not write."""
    target = tmp_path / "target"
    mine = target / "train" / "red" / "0.png" if command == "images" else target / "torch" / "hub" / "x.pth"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b"the user's own file")
    before = _tree(target)
    result = subprocess.run([sys.executable, str(HELPER), command, str(target)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    _one_error_line(result.stderr)
    assert _tree(target) == before


# --------------------------------------------------------------------------- hostile CLI runs
class Evil:
    """Pickles as a call of ``fn(*args)``: what an attacker's checkpoint asks the unpickler to run."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _callables(marker: Path) -> dict:
    """name -> (callable, args): each would write ``marker`` if it ran."""
    return {"exec": (exec, (f"open({str(marker)!r}, 'w').write('ran')",)),
            "eval": (eval, (f"open({str(marker)!r}, 'w')",)),
            "system": (os.system, (f"touch {marker}",)),
            "popen": (subprocess.Popen, (["touch", str(marker)],))}


def _qualname(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def _deep_folder(base: Path, levels: int, name: str = "d") -> str:
    """``levels`` nested folders under ``base`` (made through descriptors: the path may exceed PATH_MAX); returns
    the relative path of the innermost one."""
    fd = os.open(base, os.O_RDONLY)
    for _ in range(levels):
        os.mkdir(name, dir_fd=fd)
        inner = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    os.close(fd)
    return "/".join([name] * levels)


def _remove_deep(folder: Path) -> None:
    """Remove a folder nested beyond Python's recursion limit (``shutil.rmtree``, and pytest's clean-up of old
    temporary folders, recurse once per level): GNU ``rm`` walks any depth."""
    if folder.exists():
        subprocess.run(["rm", "-rf", "--", str(folder)], check=True, timeout=120)


def _write_deep(base: Path, relative: str, data: bytes) -> None:
    fd = os.open(base, os.O_RDONLY)
    for part in relative.split("/")[:-1]:
        inner = os.open(part, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    out = os.open(relative.split("/")[-1], os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(out, data)
    os.close(out)
    os.close(fd)


NEWLINE_NAMES = {"lf": "a\nerror: FORGED", "crlf": "b\r\nerror: FORGED", "cr": "c\rerror: FORGED",
                 "erase": "d\x1b[2K\rerror: FORGED", "ls": "e\u2028error: FORGED", "nel": "f\x85error: FORGED",
                 "tail": "g\nwarning: FORGED\n"}


def _forged(text: str) -> list[str]:
    """Lines of ``text`` (split as a terminal or Python would) that a file name started: the names above carry
    ``error: FORGED`` / ``warning: FORGED`` right after a line break."""
    lines = text.replace("\r", "\n").splitlines()
    return [line for line in lines if line.lstrip().startswith(("error: FORGED", "warning: FORGED"))]


@pytest.fixture(scope="module")
def attack(tmp_path_factory, request):
    root = tmp_path_factory.mktemp("paths")
    inputs = root / "in"
    inputs.mkdir()
    marker = root / "PAYLOAD_RAN"
    cases: dict[str, dict] = {}
    expect: dict[str, object] = {}

    # 2. content, not name
    contents = {"zip_as_safetensors": _pickled(inputs / "zip.safetensors"),
                "legacy_as_safetensors": _pickled(inputs / "legacy.safetensors",
                                                  _use_new_zipfile_serialization=False),
                "safetensors_as_pth": _safetensors(inputs / "st.pth"),
                "safetensors_as_bin": _safetensors(inputs / "st.bin")}
    for name, path in contents.items():
        cases[f"content:{name}"] = {"argv": ["info", path]}
    hf_pickle = inputs / "hf_pickle"
    hf_pickle.mkdir()
    (hf_pickle / "config.json").write_text(json.dumps({"model_type": "vit", "num_attention_heads": 2}))
    _pickled(hf_pickle / "model.safetensors")
    cases["content:hf_pickle_as_safetensors"] = {"argv": ["info", hf_pickle]}
    expect["content:hf_pickle_as_safetensors"] = ("model.safetensors", "pickle")
    hf_st = inputs / "hf_st"
    hf_st.mkdir()
    (hf_st / "config.json").write_text(json.dumps({"model_type": "vit", "num_attention_heads": 2}))
    _safetensors(hf_st / "pytorch_model.bin")
    cases["content:hf_safetensors_as_bin"] = {"argv": ["info", hf_st]}
    expect["content:hf_safetensors_as_bin"] = ("pytorch_model.bin", "safetensors")

    # 3. refused pickles name the callable they ask for
    for fname, (fn, args) in _callables(marker).items():
        for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
            path = inputs / f"{fname}_p{protocol}.pth"
            path.write_bytes(pickle.dumps({"model": Evil(fn, *args)}, protocol=protocol))
            cases[f"callable:{path.name}"] = {"argv": ["info", path]}
            expect[f"callable:{path.name}"] = _qualname(fn)
        for kind, kwargs in (("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})):
            path = inputs / f"{fname}_torch_{kind}.pth"
            torch.save({"model": tiny_state(), "args": Evil(fn, *args)}, path, **kwargs)
            cases[f"callable:{path.name}"] = {"argv": ["info", path]}
            expect[f"callable:{path.name}"] = _qualname(fn)
    nested = Path.write_text  # a qualified name inside a class (protocol 4+: STACK_GLOBAL)
    for protocol in (4, 5):
        path = inputs / f"nested_p{protocol}.pth"
        path.write_bytes(pickle.dumps({"model": Evil(nested, marker, "ran")}, protocol=protocol))
        cases[f"callable:{path.name}"] = {"argv": ["info", path]}
        expect[f"callable:{path.name}"] = _qualname(nested)
    twice = inputs / "memoized_p4.pth"  # the same global twice: the second comes from the pickle's memo
    twice.write_bytes(pickle.dumps({"a": Evil(eval, "1"), "b": Evil(eval, "2")}, protocol=4))
    cases["callable:memoized"] = {"argv": ["info", twice]}
    expect["callable:memoized"] = _qualname(eval)

    # 4. over-long names and deeply nested folders
    ok = _safetensors(inputs / "ok.safetensors")
    long_names = {"ascii_256": "a" * 256 + ".pth", "utf8_256_bytes": "\u00e9" * 128 + ".pth",
                  "long_folder": "f" * 300 + "/m.pth", "long_ext": "m." + "x" * 300}
    for name, text in long_names.items():
        cases[f"long:info:{name}"] = {"argv": ["info", inputs / text]}
        expect[f"long:info:{name}"] = str(inputs / text)[:len(str(inputs)) + 20]
    cases["long:images"] = {"argv": ["attn-distance", ok, "--images", inputs / ("i" * 300), "--bootstrap", "0"]}
    expect["long:images"] = str(inputs / ("i" * 300))[:len(str(inputs)) + 20]
    request.addfinalizer(lambda: _remove_deep(inputs / "dddd"))
    deep = _deep_folder(inputs, 1200, "dddd")  # 6,000 characters: beyond PATH_MAX
    _write_deep(inputs, deep + "/m.pth", ok.read_bytes())
    for name, target in (("file", deep + "/m.pth"), ("folder", deep), ("below_file", deep + "/m.pth/x")):
        cases[f"long:deep_{name}"] = {"argv": ["info", target], "cwd": inputs}
        expect[f"long:deep_{name}"] = "dddd/dddd/dddd"
    nested_images = inputs / "nested_images"
    nested_images.mkdir()
    request.addfinalizer(lambda: _remove_deep(nested_images))
    _deep_folder(nested_images, 1100)  # under PATH_MAX, deeper than Python's recursion limit
    cases["deep:images"] = {"argv": ["attn-distance", ok, "--images", nested_images, "--bootstrap", "0"]}

    # 5. names with newlines and control characters
    photo = inputs / "photos"
    photo.mkdir()
    Image.new("RGB", (40, 40), (200, 30, 30)).save(photo / "red.png")
    for key, text in NEWLINE_NAMES.items():
        good = _safetensors(inputs / f"{text}.safetensors")
        cases[f"newline:info:{key}"] = {"argv": ["info", good]}
        cases[f"newline:attn:{key}"] = {"argv": ["attn-distance", good, "--images", photo, "--bootstrap", "0",
                                                  "--out", root / "tables" / f"{text}.csv"]}
        bad = inputs / f"{text}.pth"
        bad.write_bytes(b"not a checkpoint")
        cases[f"newline:refused:{key}"] = {"argv": ["info", bad]}
        images = inputs / f"images_{key}"
        images.mkdir()
        Image.new("RGB", (40, 40), (30, 30, 200)).save(images / "blue.png")
        (images / f"{text}.png").write_bytes(b"\x89PNG\r\n\x1a\n but broken")
        cases[f"newline:warning:{key}"] = {"argv": ["attn-distance", ok, "--images", images, "--bootstrap", "0"]}
        recipes = inputs / f"recipes_{key}"
        recipes.mkdir()
        (recipes / f"{text}.yaml").write_text("name: [unclosed\n")
        cases[f"newline:recipes:{key}"] = {"argv": ["recipe", "ls", recipes]}

    names = list(cases)
    results = run_cases([cases[n] for n in names], root, timeout=90)
    return {"results": dict(zip(names, results)), "expect": expect, "marker": marker, "inputs": inputs}


# --------------------------------------------------------------------------- 2. content, not name
@pytest.mark.parametrize("case", ["content:zip_as_safetensors", "content:legacy_as_safetensors",
                                  "content:safetensors_as_pth", "content:safetensors_as_bin"])
@pytest.mark.slow
def test_a_checkpoint_is_read_by_its_content_not_its_name(attack, case):
    result = attack["results"][case]
    assert_clean_exit(result)
    assert f"ViT width {WIDTH}, depth {DEPTH}" in result.stdout, result.describe()


@pytest.mark.parametrize("case", ["content:hf_pickle_as_safetensors", "content:hf_safetensors_as_bin"])
@pytest.mark.slow
def test_a_folder_file_of_the_wrong_format_is_named(attack, case):
    """In a HuggingFace folder the file names are the format: a mismatch is one line saying what the bytes are."""
    name, actual = attack["expect"][case]
    line = assert_refused(attack["results"][case], name)
    assert actual in line, line


def test_python_api_reads_by_content(tmp_path):
    import maeprobe

    for path in (_pickled(tmp_path / "zip.safetensors"),
                 _pickled(tmp_path / "legacy.safetensors", _use_new_zipfile_serialization=False),
                 _safetensors(tmp_path / "st.pth")):
        model = maeprobe.load(path)
        assert (model.config.embed_dim, model.config.depth) == (WIDTH, DEPTH)


# --------------------------------------------------------------------------- 3. the callable a pickle asks for
@pytest.mark.slow
def test_a_refused_pickle_names_the_callable(attack):
    failures = []
    for case, expected in attack["expect"].items():
        if not case.startswith("callable:"):
            continue
        result = attack["results"][case]
        try:
            line = assert_refused(result, "refused to load")
            assert f"`{expected}`" in line, line
        except AssertionError as exc:
            failures.append(f"{case}: {exc}")
    assert not failures, "\n".join(failures[:6])
    assert not attack["marker"].exists()


def test_python_api_names_the_callable(tmp_path):
    from maeprobe import load
    from maeprobe.errors import CheckpointError

    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"model": Evil(os.system, f"touch {marker}")}, protocol=2))
    with pytest.raises(CheckpointError, match=f"`{_qualname(os.system)}`"):
        load(path)
    assert not marker.exists()


# --------------------------------------------------------------------------- 4. long names, deep folders
@pytest.mark.parametrize("case", ["long:info:ascii_256", "long:info:utf8_256_bytes", "long:info:long_folder",
                                  "long:info:long_ext", "long:images", "long:deep_file", "long:deep_folder",
                                  "long:deep_below_file"])
@pytest.mark.slow
def test_an_over_long_path_is_one_line_naming_it(attack, case):
    line = assert_refused(attack["results"][case])
    assert attack["expect"][case] in line, line


@pytest.mark.slow
def test_folders_nested_beyond_the_recursion_limit_are_one_line(attack):
    line = assert_refused(attack["results"]["deep:images"])
    assert "nested" in line, line


def test_python_api_long_name_is_a_maeprobe_error(tmp_path):
    from maeprobe import load
    from maeprobe.errors import MaeprobeError

    for text in ("a" * 256 + ".pth", "f" * 300 + "/m.pth"):
        with pytest.raises(MaeprobeError):
            load(tmp_path / text)


def test_bugs_still_show_a_traceback():
    """An OSError that names no path, or any other exception, is a bug: the handler lets it through."""
    from maeprobe.cli import _friendly

    def raises(exc):
        @_friendly
        def command():
            raise exc
        return command

    shown = warnings.showwarning
    try:
        for exc in (OSError("no file named"), ZeroDivisionError("a bug"), KeyError("bug")):
            with pytest.raises(type(exc)):
                raises(exc)()
    finally:
        warnings.showwarning = shown


# --------------------------------------------------------------------------- 5. newlines in names
@pytest.mark.parametrize("key", sorted(NEWLINE_NAMES))
@pytest.mark.slow
def test_a_name_cannot_forge_a_line(attack, key):
    results = attack["results"]
    info = results[f"newline:info:{key}"]
    assert_clean_exit(info)
    assert not _forged(info.stdout + info.stderr), info.describe()
    assert f"ViT width {WIDTH}" in info.stdout
    attn = results[f"newline:attn:{key}"]
    assert_clean_exit(attn)
    assert not _forged(attn.stdout + attn.stderr), attn.describe()
    refused = results[f"newline:refused:{key}"]
    assert_refused(refused)
    assert not _forged(refused.stdout + refused.stderr), refused.describe()
    warned = results[f"newline:warning:{key}"]
    assert_clean_exit(warned)
    assert not _forged(warned.stdout + warned.stderr), warned.describe()
    assert all(line.startswith("warning: ") for line in warned.stderr.splitlines() if line.strip()), warned.describe()
    listed = results[f"newline:recipes:{key}"]
    assert_clean_exit(listed)
    assert not _forged(listed.stdout + listed.stderr), listed.describe()


@pytest.mark.slow
def test_info_prints_one_line_per_field(attack):
    """`info` prints key: value lines; a name with newlines stays on its own line."""
    for key in NEWLINE_NAMES:
        stdout = attack["results"][f"newline:info:{key}"].stdout
        fields = [line.split(":", 1)[0].strip() for line in stdout.splitlines()]
        assert fields[:3] == ["file", "family", "format"], stdout


# --------------------------------------------------------------------------- 6. allocations under a cap
@pytest.fixture(scope="module")
def capped(tmp_path_factory):
    """Inputs within every limit whose processing needs more memory than the child's 100 MB cap allows."""
    root = tmp_path_factory.mktemp("capped")
    inputs = root / "in"
    inputs.mkdir()
    photo = inputs / "photos"
    photo.mkdir()
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photo / "red.png")
    cases, expect = {}, {}
    # torch: a bf16 tensor broadcast from 2 MB of storage to 48 M elements (within MAEPROBE_MAX_INFLATE), which
    # becomes 192 MB of float32 when the weights are converted
    state = tiny_state()
    state["extra.weight"] = torch.zeros(1 << 20, dtype=torch.bfloat16).expand(48, 1 << 20)
    torch.save({"model": state, "maeprobe": {"num_heads": 2}}, inputs / "broadcast.pth")
    cases["torch_alloc"] = {"argv": ["info", inputs / "broadcast.pth"]}
    expect["torch_alloc"] = ("MAEPROBE_MAX_INFLATE",)
    # numpy: a 160 MB array stored uncompressed in a JAX .npz
    np.savez(inputs / "big.npz", **{"Transformer/encoder_norm/scale": np.zeros(40 << 20, dtype=np.float32)})
    cases["numpy_alloc"] = {"argv": ["info", inputs / "big.npz"]}
    expect["numpy_alloc"] = ("MAEPROBE_MAX_INFLATE",)
    # attention statistics: a 120 x 120 patch grid (within MAEPROBE_MAX_PATCHES): [14400, 14400] distances
    _safetensors(inputs / "grid.safetensors", tiny_state(grid=120))
    cases["attention_alloc"] = {"argv": ["attn-distance", inputs / "grid.safetensors", "--images", photo,
                                         "--bootstrap", "0", "--block-queries", "0"]}
    expect["attention_alloc"] = ("MAEPROBE_MAX_PATCHES", "MAEPROBE_MAX_ATTENTION")
    names = list(cases)
    results = run_cases([cases[n] for n in names], root, budget_mb=100, timeout=90)
    return dict(zip(names, results)), expect


@pytest.mark.parametrize("case", ["torch_alloc", "numpy_alloc", "attention_alloc"])
@pytest.mark.slow
def test_a_failed_allocation_is_one_line_naming_the_limit(capped, case):
    """One line naming the step's limit: the allocation failed (out of memory), or a limit refused it up front."""
    results, expect = capped
    line = assert_refused(results[case])
    assert any(name in line for name in expect[case]), line
    assert "memory" in line or "exceeds maeprobe's limit" in line, line
    assert "corrupt" not in line and "malformed" not in line, line
