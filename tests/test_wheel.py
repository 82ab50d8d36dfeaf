"""A wheel carries the bundled recipes as package data: installed outside the repository, ``recipe_dir`` finds
them, ``load_recipe`` reads them and ``maeprobe recipe ls`` lists them (no fallback to the current folder)."""
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CHECK = """
import os, sys
from pathlib import Path
import maeprobe
from maeprobe.train.config import load_recipe, recipe_dir
assert Path(maeprobe.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve()), maeprobe.__file__
names = sorted(p.name for p in recipe_dir().glob("*.yaml"))
assert "tiny-mae.yaml" in names and "mae_vit_b16_mask75.yaml" in names, names
config = load_recipe(recipe_dir() / "tiny-mae.yaml")
assert config["task"] == "pretrain" and not list(Path(os.getcwd()).iterdir())
from typer.testing import CliRunner
from maeprobe.cli import app
listed = CliRunner().invoke(app, ["recipe", "ls"])  # the command line finds them too
assert listed.exit_code == 0 and "tiny-mae" in listed.output and "lcmae_c" in listed.output, listed.output
print(len(names))
"""


@pytest.mark.slow
def test_an_installed_wheel_finds_its_bundled_recipes(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(wheels), str(ROOT)], check=True, cwd=tmp_path)
    wheel, = wheels.glob("maeprobe-*.whl")
    bundled = sorted(p.name for p in (ROOT / "maeprobe" / "recipes").glob("*.yaml"))
    with zipfile.ZipFile(wheel) as archive:
        assert sorted(Path(n).name for n in archive.namelist() if n.startswith("maeprobe/recipes/")) == bundled
        archive.extractall(tmp_path / "site")  # a wheel is installed by unpacking it (purelib)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # the unpacked wheel first on the path; the main environment's packages (torch, timm, ...) after it
    done = subprocess.run([sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(tmp_path / 'site')!r}); "
                           f"sys.argv = ['', {str(tmp_path / 'site')!r}]; exec({CHECK!r})"],
                          cwd=elsewhere, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) == len(bundled)
