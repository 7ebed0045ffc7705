"""The one-way architecture: ``import gradmask`` loads the core only, the rest on first use; the
intra-package import graph has no cycles (.ci/import_graph.py)."""
import json
import subprocess
import sys
from pathlib import Path

import gradmask

ROOT = Path(__file__).resolve().parents[1]
CORE = {"gradmask", "gradmask.hooks", "gradmask.laplacian", "gradmask.mask", "gradmask.selection"}


def _loaded_after(code: str) -> set[str]:
    probe = (f"import sys, json\n{code}\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('gradmask', 'scipy', 'matplotlib', 'PIL'))))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_gradmask_loads_the_core_only():
    loaded = _loaded_after("import gradmask")
    assert loaded == CORE, f"unexpected: {sorted(loaded - CORE)}; missing: {sorted(CORE - loaded)}"


def test_lazy_names_load_their_module_on_first_use():
    loaded = _loaded_after("import gradmask\ngradmask.LIMap")
    assert "gradmask.saliency.limap" in loaded
    assert not any(m.startswith(("gradmask.train", "gradmask.compare", "gradmask.reproduce", "gradmask.data"))
                   for m in loaded), sorted(loaded)


def test_every_public_name_resolves():
    for name in gradmask.__all__:
        assert getattr(gradmask, name) is not None, name
    assert set(gradmask.__all__) <= set(dir(gradmask))
    assert gradmask.LIMap is __import__("gradmask.saliency", fromlist=["LIMap"]).LIMap


def test_unknown_name_is_an_attribute_error():
    try:
        gradmask.no_such_thing
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("gradmask.no_such_thing resolved")
