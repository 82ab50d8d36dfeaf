"""examples/quickstart.ipynb runs top to bottom in a fresh kernel (nbclient), offline, and shows its figures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("MAEPROBE_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("MAEPROBE_NOTEBOOK_STEPS", "3")  # CI: a shorter pretraining (any trained model), same cells
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # no DINO copy: the stand-in reference path runs
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MAEPROBE_CKPT", raising=False)
    monkeypatch.delenv("MAEPROBE_DINO", raising=False)
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=dict(os.environ))
    outputs = [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the distance plot, at least one paper figure, the render
    assert (tmp_path / "out" / "renders" / "decoder_attention.png").is_file()
